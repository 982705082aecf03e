"""The refund spool's files: what one worker writes down, and what another claims."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.metrics import GatewayMetrics
from gateway.refund_spool import (
    PendingRefund,
    PendingVoid,
    RefundSpool,
    check_folder,
    decode,
    encode,
    waiting,
)
from meter.live_state import Call, KeyCall
from meter.settings import ConfigError

CALL = Call(3, "acct_1", "proj_1", "key_1", "chat", 100_000)
KEY_CALL = KeyCall("ab" * 32, "default", 1_000)


def refund(amount: int = 1_000) -> PendingRefund:
    return PendingRefund(CALL, "1765000000000-3", amount, 20428, "upstream_5xx", 5.0, 1765e6)


def void() -> PendingVoid:
    return PendingVoid("{meter:3}:batch:x", [CALL, KEY_CALL], 20428, 6.0, 1765e6 + 1)


def unclaimed(work: PendingRefund) -> PendingRefund:
    """``work`` as read back from a spool: not numbered, no ``since``."""
    work.since, work.n = 0.0, 0
    return work


def amounts(works: list[PendingRefund | PendingVoid]) -> list[int]:
    return [w.amount if isinstance(w, PendingRefund) else -1 for w in works]


def opened(folder: Path) -> RefundSpool:
    spool = RefundSpool(check_folder(str(folder)), GatewayMetrics())
    spool.open()
    return spool


@pytest.mark.parametrize("work", [refund(), void()], ids=["refund", "void"])
def test_a_line_reads_back_as_the_work_it_was(work: PendingRefund | PendingVoid) -> None:
    back = decode(encode(work))
    assert type(back) is type(work)
    assert back.since == 0.0  # the claiming worker sets it from ``at``
    back.since = work.since
    assert back == work


@pytest.mark.parametrize(
    "line",
    [
        b'{"n":1,"at":1,"day":1,"reason":"x","event":"e","micros":"12","call":[3,"a","p","k","r",1]}',
        b'{"n":1,"at":1,"day":1,"reason":"x","event":"e","micros":12,"call":["d","r",1]}',
        b'{"n":1,"at":1,"day":1,"batch":"b","calls":[[1,2]]}',
        b'{"n":1,"at":"now","day":1,"batch":"b","calls":[]}',
        b'{"n":1,"day":1,"batch":"b","calls":[]}',
        b"[1,2]",
        b'{"n":1,"at":1,"day":1,"batch":"b","cal',  # torn
    ],
)
def test_a_line_we_did_not_write_is_counted_unreadable(line: bytes) -> None:
    good = b'{"n":2,"at":1,"day":1,"batch":"b","calls":[]}'
    works, unreadable = waiting(line + b"\n" + good + b"\n")
    assert unreadable == 1
    assert works == [PendingVoid("b", [], 1, 0.0, 1.0)]


def test_work_marked_done_is_not_waiting(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    works: list[PendingRefund | PendingVoid] = [refund(1), refund(2), void()]
    spool.add(works)
    assert [w.n for w in works] == [1, 2, 3]
    spool.done([works[0], works[2]])
    assert spool.path is not None
    left, unreadable = waiting(spool.path.read_bytes())
    assert unreadable == 0
    assert [w.amount for w in left if isinstance(w, PendingRefund)] == [2]
    spool.clear()
    assert spool.path.read_bytes() == b""
    spool.add([refund(3)])  # appended at the new end
    assert waiting(spool.path.read_bytes()) == ([unclaimed(refund(3))], 0)
    spool.close(keep=False)


def test_a_live_workers_spool_is_not_claimed_and_a_stopped_ones_is(tmp_path: Path) -> None:
    first, second = opened(tmp_path), opened(tmp_path)
    first.add([refund(7), void()])
    assert second.claim() == []  # first still holds its lock
    assert first.path is not None and first.path.exists()
    first.close(keep=True)
    [claimed] = second.claim()
    assert claimed.path == first.path and claimed.unreadable == 0
    assert [type(w) for w in claimed.waiting] == [PendingRefund, PendingVoid]
    assert not first.path.exists()  # claimed once
    assert second.claim() == []
    assert second.path is not None
    assert [p.name for p in tmp_path.iterdir()] == [second.path.name]
    # Copied into the claimer's spool before the old file went: a claimer killed now
    # leaves the work to the next one.
    second.close(keep=True)
    [again] = opened(tmp_path).claim()
    assert again.path == second.path and again.waiting == claimed.waiting


def test_a_spool_with_an_unreadable_line_is_kept_for_an_operator(tmp_path: Path) -> None:
    first = opened(tmp_path)
    first.add([refund(7)])
    first.close(keep=True)
    assert first.path is not None
    with first.path.open("ab") as file:
        file.write(b"garbage\n")
    claimer = opened(tmp_path)
    [claimed] = claimer.claim()
    assert claimer.metrics.spool_unreadable.value == 1
    assert claimed.unreadable == 1
    assert amounts(claimed.waiting) == [7]
    assert claimed.waiting[0].n == 1  # numbered in the claimer's own spool
    assert not first.path.exists()
    assert first.path.with_name(first.path.name + ".unreadable").exists()


def disk_full(spool: RefundSpool) -> None:
    """Every later write to ``spool``'s file fails as on a full disk (ENOSPC)."""
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, spool._fd)
    os.close(full)


def test_a_write_that_fails_is_counted_and_said(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    disk_full(spool)
    assert spool.add([refund()]) is False
    assert spool.metrics.spool_write_errors.value == 1


def test_a_claim_whose_copy_fails_leaves_the_old_file_for_a_later_claim(tmp_path: Path) -> None:
    first = opened(tmp_path)
    first.add([refund(7)])
    first.close(keep=True)
    claimer = opened(tmp_path)
    disk_full(claimer)
    [claimed] = claimer.claim()
    assert amounts(claimed.waiting) == [7]  # tried by the claimer all the same
    assert first.path is not None and first.path.exists()
    later = {c.path: amounts(c.waiting) for c in opened(tmp_path).claim()}
    assert later[first.path] == [7]


def test_a_spool_still_being_opened_is_not_claimed(tmp_path: Path) -> None:
    """A worker creates its file under a name claims pass over, and renames it once
    locked: another worker's claim cannot take a file nobody has locked yet."""
    (tmp_path / ".123-abc.new").write_bytes(b"")
    assert opened(tmp_path).claim() == []
    assert (tmp_path / ".123-abc.new").exists()


def test_a_folder_others_may_write_to_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o770)
    with pytest.raises(ConfigError, match=r"METER_REFUND_SPOOL_DIR=.*others may write to it"):
        check_folder(str(folder))
    os.chmod(folder, 0o755)
    assert check_folder(str(folder)) == folder


def test_a_file_is_not_a_spool_folder(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="METER_REFUND_SPOOL_DIR="):
        check_folder(str(tmp_path / "f"))


def test_a_new_folder_is_made_private(tmp_path: Path) -> None:
    folder = check_folder(str(tmp_path / "a" / "spool"))
    assert folder.is_dir() and folder.stat().st_mode & 0o777 == 0o700


def test_a_folder_another_user_owns_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    folder.mkdir(mode=0o700)
    other = folder.stat().st_uid + 1
    with pytest.raises(ConfigError, match=f"owned by uid {other - 1}, not by this user"):
        check_folder(str(folder), uid=other)
