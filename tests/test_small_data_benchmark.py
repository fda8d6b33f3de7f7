"""benchmarks/small_data.py: snapshots are taken once per time mark, of a saved iteration."""

from file_support import load_benchmark


def test_snapshot_per_time_mark(tmp_path, monkeypatch):
    sd = load_benchmark("small_data")
    clock = [100.0]
    monkeypatch.setattr(sd.time, "monotonic", lambda: clock[0])
    snaps = sd.Snapshots(every_s=10.0, period=5)
    snaps.on_start(sd.RunInfo(run_dir=tmp_path, start_iter=0, max_iter=None, world_size=1,
                              device="cpu", batch_size=1, num_classes=1, train_images=1,
                              val_images=1, amp="none"))
    for it in range(1, 41):  # 1.5 s per iteration; the loop saves every 5th after the callback
        clock[0] += 1.5
        snaps.on_iteration(it, None, {"loss": 1.0}, 0.1)
        if it % 5 == 0:
            (tmp_path / "last.pth").write_text(str(it))
    # iterations 10 (15 s), 15 (22.5 s), 20 (30 s) ... ; marks at 10, 20, 30, 40, 50 s
    assert [(i, t) for i, t, _ in snaps.taken] == [(10, 15.0), (15, 22.5), (20, 30.0),
                                                   (30, 45.0), (35, 52.5)]
    assert all(p.read_text() == str(i) for i, _, p in snaps.taken)
    table = sd.render([{"model": "watershed", "minutes": None, "iteration": None, "AP": 1.0,
                        "AP50": 2.0, "AP75": 3.0, "APs": 4.0}], "t")
    assert table.splitlines()[-1].split() == ["watershed", "-", "-", "1.0", "2.0", "3.0", "4.0"]
