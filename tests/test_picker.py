from __future__ import annotations

import random
from collections import Counter

import pytest

from murder_core.errors import MetainfoError, RemoteProtocolError
from murder_core.picker import BLOCK_SIZE, Block, PiecePicker

KIB16 = BLOCK_SIZE


def make(
    num_pieces: int,
    blocks_per_piece: int = 4,
    *,
    seed: int = 0,
    endgame_threshold: int = 0,
    last_piece_length: int | None = None,
) -> PiecePicker:
    piece_length = blocks_per_piece * KIB16
    total = (num_pieces - 1) * piece_length + (last_piece_length or piece_length)
    return PiecePicker(
        num_pieces,
        piece_length,
        total,
        rng=random.Random(seed),
        endgame_threshold=endgame_threshold,
    )


def bitfield(num_pieces: int, pieces: set[int]) -> bytes:
    bits = bytearray((num_pieces + 7) // 8)
    for i in pieces:
        bits[i // 8] |= 0x80 >> (i % 8)
    return bytes(bits)


def add(picker: PiecePicker, peer: str, num_pieces: int, pieces: set[int] | None) -> None:
    """A peer with the given pieces, or a seed when ``pieces`` is None."""
    picker.add_peer(peer)
    if pieces is None:
        picker.peer_has_all(peer)
    else:
        picker.peer_bitfield(peer, bitfield(num_pieces, pieces))


def deliver(picker: PiecePicker, peer: str, blocks: list[Block]) -> list[int]:
    """Deliver blocks; pass every piece that completes. Returns those pieces."""
    passed = []
    for block in blocks:
        done, cancels = picker.block_received(peer, block)
        assert cancels == []
        if done:
            picker.piece_passed(block[0])
            passed.append(block[0])
    return passed


# -- construction and block layout ---------------------------------------------------
@pytest.mark.parametrize(
    ("num_pieces", "piece_length", "total", "block_size"),
    [(3, 32768, 65536, KIB16), (1, 0, 10, KIB16), (1, 32768, 0, KIB16), (1, 32768, 10, 0)],
)
def test_rejects_inconsistent_geometry(
    num_pieces: int, piece_length: int, total: int, block_size: int
) -> None:
    with pytest.raises(MetainfoError) as excinfo:
        PiecePicker(num_pieces, piece_length, total, block_size=block_size)
    assert str(excinfo.value) == (
        f"inconsistent geometry: {num_pieces} pieces of {piece_length} bytes "
        f"for {total} bytes in blocks of {block_size}"
    )
    assert excinfo.value.value == num_pieces


def test_blocks_cover_short_last_piece_and_short_last_block() -> None:
    picker = PiecePicker(3, 40000, 100000, rng=random.Random(1))
    add(picker, "seed", 3, None)
    blocks = picker.next_requests("seed", 100)
    assert sorted(blocks) == [
        (0, 0, 16384),
        (0, 16384, 16384),
        (0, 32768, 7232),
        (1, 0, 16384),
        (1, 16384, 16384),
        (1, 32768, 7232),
        (2, 0, 16384),
        (2, 16384, 3616),
    ]
    # Within a piece, blocks go out in disk order.
    for index in range(3):
        begins = [b[1] for b in blocks if b[0] == index]
        assert begins == sorted(begins)


def test_max_count_is_respected_and_zero_asks_nothing() -> None:
    picker = make(4)
    add(picker, "seed", 4, None)
    assert picker.next_requests("seed", 0) == []
    assert len(picker.next_requests("seed", 5)) == 5
    assert picker.outstanding("seed") == 5


# -- rarest first --------------------------------------------------------------------
def test_opens_pieces_rarest_first() -> None:
    # Non-seed availability: piece 0 -> 3 peers, 1 -> 0, 2 -> 2, 3 -> 1.
    picker = make(4)
    add(picker, "a", 4, {0, 2, 3})
    add(picker, "b", 4, {0, 2})
    add(picker, "c", 4, {0})
    add(picker, "seed", 4, None)
    order = []
    for _ in range(4):
        blocks = picker.next_requests("seed", 4)
        assert len({b[0] for b in blocks}) == 1
        order.append(blocks[0][0])
    assert order == [1, 3, 2, 0]


@pytest.mark.parametrize("seed", range(5))
def test_partial_peer_gets_its_rarest_piece(seed: int) -> None:
    picker = make(7, seed=seed)
    add(picker, "a", 7, {0, 1, 2, 3, 4, 5})
    add(picker, "b", 7, {0, 1, 2, 3, 4, 6})
    add(picker, "c", 7, {0, 1, 2, 3})
    # For "a" (not a seed): piece 5 has availability 1, piece 4 has 2, the rest 3.
    assert {b[0] for b in picker.next_requests("a", 4)} == {5}
    assert {b[0] for b in picker.next_requests("a", 4)} == {4}


def test_random_tie_break_spreads_first_pieces_of_a_fresh_swarm() -> None:
    firsts = []
    for seed in range(40):
        picker = make(64, seed=seed)
        add(picker, "seed", 64, None)
        firsts.append(picker.next_requests("seed", 1)[0][0])
    assert len(set(firsts)) > 20
    # The injected rng makes the choice reproducible.
    again = make(64, seed=7)
    add(again, "seed", 64, None)
    assert again.next_requests("seed", 1)[0][0] == firsts[7]


# -- finishing started pieces, duplicates --------------------------------------------
def test_finishes_started_pieces_before_opening_new_ones() -> None:
    picker = make(8)
    add(picker, "a", 8, None)
    add(picker, "b", 8, None)
    first = picker.next_requests("a", 3)
    started = first[0][0]
    assert [b[0] for b in first] == [started] * 3
    second = picker.next_requests("b", 3)
    assert second[0] == (started, 3 * KIB16, KIB16)
    assert second[1][0] == second[2][0] != started


def test_started_piece_the_peer_lacks_is_skipped() -> None:
    picker = make(4)
    add(picker, "a", 4, {0})
    add(picker, "b", 4, {1})
    assert {b[0] for b in picker.next_requests("a", 2)} == {0}
    assert {b[0] for b in picker.next_requests("b", 2)} == {1}


@pytest.mark.parametrize("seed", range(8))
def test_no_block_requested_twice_outside_endgame(seed: int) -> None:
    rng = random.Random(seed)
    n = 24
    picker = make(n, seed=seed)
    peers = [f"p{i}" for i in range(5)]
    for i, peer in enumerate(peers):
        add(picker, peer, n, None if i == 0 else {j for j in range(n) if rng.random() < 0.5})
    received: Counter[Block] = Counter()
    endgame_seen = False
    for _ in range(600):
        if picker.complete:
            break
        peer = rng.choice(peers)
        action = rng.random()
        if action < 0.6:
            owed_elsewhere = set(_outstanding(picker, [p for p in peers if p != peer]))
            blocks = picker.next_requests(peer, rng.randint(1, 6))
            duplicates = [b for b in blocks if b in owed_elsewhere]
            # Duplicates come only after every fresh block, and only in endgame.
            assert blocks[len(blocks) - len(duplicates) :] == duplicates
            assert not duplicates or picker.endgame
        elif action < 0.9:
            owed = _outstanding(picker, [peer])
            for block in owed[: rng.randint(1, 4)]:
                received[block] += 1
                done, _ = picker.block_received(peer, block)
                if done:
                    picker.piece_passed(block[0])
        else:
            picker.requests_dropped(peer)
        endgame_seen = endgame_seen or picker.endgame
        assert max(Counter(_outstanding(picker, peers)).values(), default=0) <= 2
        if not endgame_seen:
            flat = _outstanding(picker, peers)
            assert len(flat) == len(set(flat))
    assert endgame_seen
    assert all(count == 1 for count in received.values())


def _outstanding(picker: PiecePicker, peers: list[str], n: int = 24) -> list[Block]:
    """Every block some peer owes us, once per peer asked (pieces of 4 blocks)."""
    out: list[Block] = []
    for index in range(n):
        for begin in range(0, 4 * KIB16, KIB16):
            block = (index, begin, KIB16)
            out.extend(block for peer in peers if picker.expecting(peer, block))
    return out


# -- endgame -------------------------------------------------------------------------
def test_endgame_asks_one_idle_peer_more_and_returns_cancels() -> None:
    picker = make(1, blocks_per_piece=2)
    add(picker, "a", 1, None)
    add(picker, "b", 1, None)
    add(picker, "c", 1, None)
    before = picker.endgame
    blocks = picker.next_requests("a", 10)
    assert blocks == [(0, 0, KIB16), (0, KIB16, KIB16)]
    assert (before, picker.endgame) == (False, True)
    # "b" owes us nothing, so it is asked too ...
    assert picker.next_requests("b", 10) == blocks
    # ... but no block is asked of a third peer, nor again of the same one.
    assert picker.next_requests("c", 10) == []
    assert picker.next_requests("b", 10) == []

    assert picker.block_received("a", blocks[0]) == (False, [("b", blocks[0])])
    assert not picker.expecting("b", blocks[0])
    assert picker.outstanding("b") == 1
    assert picker.next_requests("c", 10) == []  # blocks[1] is still owed by two peers
    assert picker.block_received("b", blocks[1]) == (True, [("a", blocks[1])])
    # The late copy from "a" is ignored.
    assert picker.block_received("a", blocks[1]) == (False, [])
    picker.piece_passed(0)
    assert picker.complete
    assert not picker.endgame
    assert picker.next_requests("c", 4) == []


def test_endgame_leaves_a_peer_that_still_owes_blocks_alone() -> None:
    """A busy peer's queue is what it will send us anyway: a copy would only come twice."""
    picker = make(2, blocks_per_piece=1)
    add(picker, "a", 2, None)
    add(picker, "b", 2, None)
    (from_a,) = picker.next_requests("a", 1)
    (from_b,) = picker.next_requests("b", 1)
    assert picker.endgame and from_a != from_b
    assert picker.next_requests("b", 4) == []
    assert picker.next_requests("a", 4) == []
    assert picker.block_received("b", from_b) == (True, [])
    picker.piece_passed(from_b[0])
    assert picker.next_requests("b", 4) == [from_a]


def test_endgame_only_duplicates_pieces_the_peer_has() -> None:
    picker = make(2, blocks_per_piece=1)
    add(picker, "a", 2, None)
    add(picker, "b", 2, {1})
    picker.next_requests("a", 2)
    assert picker.endgame
    assert picker.next_requests("b", 4) == [(1, 0, KIB16)]


@pytest.mark.parametrize(("threshold", "expected"), [(0, []), (2, [(0, 0, KIB16)])])
def test_endgame_threshold_allows_duplicates_while_blocks_are_unrequested(
    threshold: int, expected: list[Block]
) -> None:
    picker = make(2, blocks_per_piece=1, endgame_threshold=threshold)
    add(picker, "a", 2, {0})
    add(picker, "c", 2, {0})
    add(picker, "b", 2, {1})
    assert picker.next_requests("a", 4) == [(0, 0, KIB16)]
    # Piece 1 is still unrequested, so only the threshold can start endgame.
    assert picker.endgame is (threshold > 0)
    assert picker.next_requests("c", 4) == expected


# -- failures, chokes, rejects, departures --------------------------------------------
def test_failed_piece_goes_back_to_the_pool() -> None:
    picker = make(2, blocks_per_piece=2)
    add(picker, "a", 2, {0})
    add(picker, "b", 2, {0})
    blocks = picker.next_requests("a", 2)
    assert [picker.block_received("a", b)[0] for b in blocks] == [False, True]
    picker.piece_failed(0)
    assert not picker.have(0)
    assert not picker.endgame
    assert picker.next_requests("b", 4) == blocks
    assert picker.block_received("a", blocks[0]) == (False, [])
    assert deliver(picker, "b", blocks) == [0]
    assert picker.have(0)
    with pytest.raises(ValueError, match="piece 1 is not being downloaded"):
        picker.piece_failed(1)


def test_failing_a_piece_with_requests_in_flight_forgets_them() -> None:
    picker = make(1, blocks_per_piece=3)
    add(picker, "a", 1, None)
    blocks = picker.next_requests("a", 3)
    picker.block_received("a", blocks[0])
    picker.piece_failed(0)
    assert picker.outstanding("a") == 0
    assert picker.next_requests("a", 3) == blocks


def test_remove_peer_returns_its_blocks_to_the_pool() -> None:
    picker = make(3, blocks_per_piece=1)
    add(picker, "a", 3, None)
    add(picker, "b", 3, {0, 1})
    taken = picker.next_requests("a", 2)
    # Piece 2 is the rarest (only the seed has it), so it went first.
    assert taken[0] == (2, 0, KIB16)
    assert picker.remove_peer("a") == taken
    with pytest.raises(KeyError, match="never added"):
        picker.outstanding("a")
    assert sorted(picker.next_requests("b", 10)) == [(0, 0, KIB16), (1, 0, KIB16)]
    # Piece 2 is back in the pool but nobody left has it.
    assert picker.next_requests("b", 10) == []
    add(picker, "c", 3, None)
    assert picker.next_requests("c", 1) == [(2, 0, KIB16)]


def test_remove_peer_in_endgame_keeps_blocks_others_still_owe() -> None:
    picker = make(1, blocks_per_piece=1)
    add(picker, "a", 1, None)
    add(picker, "b", 1, None)
    block = picker.next_requests("a", 1)[0]
    assert picker.next_requests("b", 1) == [block]
    assert picker.remove_peer("a") == [block]
    assert picker.expecting("b", block)
    assert picker.endgame
    assert picker.block_received("b", block) == (True, [])


def test_choke_drops_requests_and_reject_drops_one() -> None:
    picker = make(2, blocks_per_piece=2)
    add(picker, "a", 2, None)
    blocks = picker.next_requests("a", 4)
    assert picker.request_rejected("a", blocks[1]) is True
    assert picker.request_rejected("a", blocks[1]) is False
    assert picker.outstanding("a") == 3
    assert picker.next_requests("a", 4) == [blocks[1]]
    assert sorted(picker.requests_dropped("a")) == sorted(blocks)
    assert picker.outstanding("a") == 0
    assert sorted(picker.next_requests("a", 4)) == sorted(blocks)


def test_unrequested_block_is_ignored() -> None:
    picker = make(2)
    add(picker, "a", 2, None)
    assert picker.block_received("a", (0, 0, KIB16)) == (False, [])
    assert picker.block_received("stranger", (0, 0, KIB16)) == (False, [])
    block = picker.next_requests("a", 1)[0]
    assert picker.block_received("a", (block[0], block[1], 100)) == (False, [])
    assert picker.expecting("a", block)


# -- what peers have -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bits", "message"),
    [
        (b"\xff", "bitfield for 10 pieces must be 2 bytes, got 1"),
        (b"\xff\xe0", "bitfield has spare bits set after piece 9: last byte 0xe0"),
    ],
)
def test_bad_bitfield_is_a_remote_protocol_error(bits: bytes, message: str) -> None:
    picker = make(10)
    picker.add_peer("a")
    with pytest.raises(RemoteProtocolError) as excinfo:
        picker.peer_bitfield("a", bits)
    assert str(excinfo.value) == message


def test_have_out_of_range_is_a_remote_protocol_error() -> None:
    picker = make(10)
    picker.add_peer("a")
    with pytest.raises(RemoteProtocolError, match=r"^have for piece 10, but there are 10 pieces$"):
        picker.peer_has("a", 10)


def test_interest_follows_what_we_still_need() -> None:
    picker = make(3, blocks_per_piece=1)
    add(picker, "a", 3, {1})
    add(picker, "seed", 3, None)
    picker.add_peer("empty")
    assert picker.interesting("a")
    assert picker.interesting("seed")
    assert not picker.interesting("empty")
    picker.mark_have(1)
    assert not picker.interesting("a")
    picker.peer_has("a", 2)
    assert picker.interesting("a")
    assert deliver(picker, "a", picker.next_requests("a", 5)) == [2]
    assert not picker.interesting("a")
    picker.mark_have(0)
    assert picker.complete
    assert picker.missing_count == 0
    assert not picker.interesting("seed")


def test_pieces_marked_have_are_never_requested() -> None:
    picker = make(5, blocks_per_piece=1)
    for i in (0, 2, 4):
        picker.mark_have(i)
    assert picker.missing_count == 2
    add(picker, "seed", 5, None)
    assert sorted(b[0] for b in picker.next_requests("seed", 10)) == [1, 3]


def test_peer_with_every_piece_via_haves_counts_as_a_seed() -> None:
    picker = make(3, blocks_per_piece=1)
    add(picker, "a", 3, set())
    add(picker, "b", 3, {0})
    for i in range(3):
        picker.peer_has("a", i)
    picker.peer_has("a", 1)  # repeated haves are harmless
    # Rarest-first ignores the seed: piece 0 (also on "b") goes last.
    order = [picker.next_requests("a", 1)[0][0] for _ in range(3)]
    assert order[2] == 0
    picker.remove_peer("a")
    assert picker.interesting("b")


def test_full_bitfield_and_have_all_mean_the_same() -> None:
    picker = make(9, blocks_per_piece=1)
    picker.add_peer("x")
    picker.peer_bitfield("x", bitfield(9, set(range(9))))
    picker.peer_has_all("x")
    assert len(picker.next_requests("x", 20)) == 9


def test_whole_download_with_mixed_peers_receives_every_block_once() -> None:
    n = 40
    rng = random.Random(3)
    picker = make(n, blocks_per_piece=3, last_piece_length=KIB16 + 5)
    peers = ["s", "p1", "p2", "p3"]
    add(picker, "s", n, None)
    for peer in peers[1:]:
        add(picker, peer, n, {i for i in range(n) if rng.random() < 0.4})
    got: Counter[Block] = Counter()
    rounds = 0
    while not picker.complete:
        rounds += 1
        assert rounds < 10_000
        for peer in peers:
            for block in picker.next_requests(peer, 4):
                got[block] += 1
                done, cancels = picker.block_received(peer, block)
                assert cancels == []
                if done:
                    picker.piece_passed(block[0])
    assert sum(got.values()) == (n - 1) * 3 + 2
    assert set(got.values()) == {1}
    assert (n - 1, KIB16, 5) in got
