"""Option aliases shared by every command, so a concept has one name and one help text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        help="Zoo name (e.g. r50_giam) or path to a YAML config, ours or detectron2-style.",
    ),
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        "-w",
        help="Checkpoint: ours (config inside) or official (needs --config), e.g. model.pth.",
    ),
]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        "-d",
        help="DATA.yaml with train/val splits, or a built-in name: demo, crowded, rods, "
        "coco_2017_val.",
    ),
]
SizeOpt = Annotated[
    int | None, typer.Option("--size", help="Test short side in pixels, e.g. 608 (config default).")
]
MaxSizeOpt = Annotated[
    int | None, typer.Option("--max-size", help="Test long side limit in pixels, e.g. 853.")
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="cpu, cuda or cuda:N, e.g. --device cuda.")
]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help="fp32, bf16 (CPU or CUDA) or fp16 (CUDA), e.g. --dtype bf16.")
]
OutOpt = Annotated[
    Path | None, typer.Option("--out", "-o", help="Output folder or file, e.g. viz/.")
]
GpusOpt = Annotated[
    int, typer.Option("--gpus", help="Processes (one per GPU; CPU processes without CUDA), e.g. 8.")
]
BatchOpt = Annotated[int | None, typer.Option("--batch", "-b", help="Images per batch, e.g. 8.")]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Config overrides KEY=VALUE, e.g. solver.lr=1e-4 model.num_classes=3."),
]
ConfigsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--config",
        "-c",
        help="Zoo name or YAML path; repeat for several models, e.g. -c r50_giam -c r50vd_giam.",
    ),
]
WeightsListOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--weights",
        "-w",
        help="Checkpoint(s), ours or official (then with --config); repeat for several models.",
    ),
]
JsonOutOpt = Annotated[
    Path | None, typer.Option("--json", help="Also write the numbers as JSON here, e.g. out.json.")
]
