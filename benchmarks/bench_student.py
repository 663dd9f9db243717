"""What distillation buys: each teacher and a trained student side by side, on one machine in one run.

    python benchmarks/bench_student.py --run runs/demo/kd_pred-74b89b494b [--extract-config configs/demo_vision.toml]
                                       [--rows 1000] [--repeats 30] [--threads 1]

Per model: parameters, size on disk (the teacher's weights file, the student's student.pt),
inputs/s of the forward pass at batch 1 and 64 on prepared tensors (decoding left out: the same
for both; CPU, and the GPU when there is one), and accuracy on the same first ``--rows`` test
rows: the teacher's linear probe fitted on the run's labeled training rows (cached features, the
same label budget) against the student's predictions. Goal (issue 22): a student 10x faster than
its teacher at >= 95% of its probe's accuracy. Saves JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from common import result_path, save  # benchmarks/common.py
from featcache.pipeline.config import ExtractConfig
from featcache.pipeline.teachers import build_teacher
from featcache.plumbing.config import load_config
from featcache.plumbing.paths import resolve_path
from featcache.plumbing.provenance import created_by, utc_now
from featcache.rawdata import head, source_of
from featcache.train.config import TrainConfig
from featcache.train.data import FeatureBank, build_splits
from featcache.train.export import serving_module
from featcache.train.load import load_student, open_run
from featcache.train.prediction import predict
from featcache.train.probe import fit_linear_probe, probe_accuracy


def rate(forward, make_batch, batch: int, repeats: int, device: torch.device) -> float:
    """Inputs per second of ``forward`` at ``batch``: median of ``repeats`` timed calls after 3 warm-ups."""
    x = make_batch(batch)
    times = []
    with torch.no_grad():
        for i in range(repeats + 3):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            forward(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return batch / float(np.median(times))


def speeds(forward, make_batch, repeats: int, devices: list[torch.device], to) -> dict[str, float]:
    out = {}
    for device in devices:
        to(device)
        for batch in (1, 64):
            reps = repeats if batch == 1 else max(3, repeats // 10)
            out[f"{device.type}_batch{batch}"] = rate(forward, lambda b: make_batch(b, device), batch, reps, device)
    to(torch.device("cpu"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a finished run directory (its student)")
    ap.add_argument("--extract-config", default="configs/demo_vision.toml", help="the teachers' definitions")
    ap.add_argument("--rows", type=int, default=1000, help="test rows the accuracies are measured on")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads for the timings (1: stable on a machine shared with other jobs)")
    ap.add_argument("--out", default=result_path("bench_student"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])

    run = open_run(args.run)
    cfg = load_config(TrainConfig, data=run.config)
    splits, num_classes = build_splits(cfg)
    train, test = splits["train"], splits["test"]
    rows = test.rows[:args.rows]
    src = head(source_of(test.cache, cfg.data.data_root), int(rows.max()) + 1)  # the first test rows, raw
    images = [src.load(int(i)) for i in rows]
    labels = test.cache.labels[rows]

    model, transform, _ = load_student(args.run)
    student = serving_module(model, transform)
    preds = predict(args.run, src, batch_size=64, progress=False)
    student_acc = float(np.mean([preds.rows[int(i)]["predicted"] == preds.classes[y] for i, y in zip(rows, labels)]))
    student_x = transform.batch(images[:64])
    results = {"student": {
        "name": run.config["student"]["name"], "method": run.results.get("method"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "bytes_on_disk": os.path.getsize(os.path.join(args.run, "student.pt")),
        "input": f"{transform.size} px",
        "inputs_per_second": speeds(student, lambda b, d: student_x[:b].to(d), args.repeats, devices, student.to),
        "accuracy": student_acc, "run_test_accuracy": run.results.get("test_accuracy")}}
    print(f"student {results['student']['name']}: accuracy {student_acc:.4f} on {len(rows)} test rows, "
          f"{results['student']['inputs_per_second']}")

    teachers = list(cfg.data.teachers) or list(train.cache.teachers)
    extract = load_config(ExtractConfig, args.extract_config)
    for tc in [t for t in extract.teachers if t.name in teachers]:
        teacher = build_teacher(tc, torch.device("cpu"), "image")
        bank = FeatureBank(train.cache, (tc.name,), train.rows, cfg.data.max_ram_gb)
        probe = fit_linear_probe(bank.take_eval(train.rows), train.labels, num_classes, seed=cfg.seed)
        feats = torch.cat([teacher.encode(teacher.prepare(images[i:i + 64])) for i in range(0, len(images), 64)])
        acc = probe_accuracy(probe, feats.numpy(), labels)
        x = teacher.prepare(images[:64])
        results[tc.name] = {
            "parameters": sum(p.numel() for p in teacher.model.parameters()),
            "bytes_on_disk": os.path.getsize(resolve_path(tc.pretrained)) if tc.pretrained else None,
            "input": f"{tc.image_size} px",
            "inputs_per_second": speeds(teacher.model, lambda b, d: x[:b].to(d), args.repeats, devices,
                                        teacher.model.to),
            "probe_accuracy": acc}
        print(f"teacher {tc.name}: probe accuracy {acc:.4f} ({len(train.rows)} labeled rows), "
              f"{results[tc.name]['inputs_per_second']}")

    s = results["student"]
    lines = ["| model | parameters | on disk | input | inputs/s batch 1 | inputs/s batch 64 | accuracy |",
             "|---|---|---|---|---|---|---|"]
    goals = {}
    for name, r in results.items():
        ips = r["inputs_per_second"]
        acc = r.get("probe_accuracy", r.get("accuracy"))
        lines.append(f"| {name} | {r['parameters'] / 1e6:.2f} M | {(r['bytes_on_disk'] or 0) / 2**20:.1f} MiB | "
                     f"{r['input']} | {ips['cpu_batch1']:.0f} | {ips['cpu_batch64']:.0f} | {acc:.4f} |")
        if name != "student":
            speedup = s["inputs_per_second"]["cpu_batch64"] / ips["cpu_batch64"]
            share = s["accuracy"] / r["probe_accuracy"]
            goals[name] = {"speedup_batch64": speedup,
                           "speedup_batch1": s["inputs_per_second"]["cpu_batch1"] / ips["cpu_batch1"],
                           "accuracy_vs_probe": share, "met": bool(speedup >= 10 and share >= 0.95)}
            print(f"the student runs {speedup:.1f}x faster than {name} (batch 64, CPU) at {100 * share:.1f}% "
                  "of its probe's accuracy")
    print("\n".join(lines))
    save(args.out, {"run": args.run, "rows": int(len(rows)), "labeled_train_rows": int(len(train.rows)),
                    "results": results, "table": "\n".join(lines), "goals": goals,
                    "torch_threads": torch.get_num_threads(), "when": utc_now(), "featcache": created_by()})


if __name__ == "__main__":
    main()
