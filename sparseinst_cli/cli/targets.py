"""Which models a command runs on: repeated --weights / --config (or --all) -> labelled pairs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import load_config, zoo_names
from ..errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    """One model to evaluate or benchmark; `weights=None` keeps the random initialisation."""

    weights: Path | None
    config: str | None
    label: str


def official_variants() -> list[str]:
    """Every zoo variant of the paper (zoo names, without the synthetic demo model)."""
    return [n for n in zoo_names() if not n.startswith("demo")]


def _stem(name: str | Path) -> str:
    name = Path(name).name
    return name[:-5] if name.endswith(".yaml") else Path(name).stem


def model_specs(
    weights: list[Path] | None, configs: list[str] | None, *, command: str
) -> list[ModelSpec]:
    """Pair --weights with --config in order; one --config may serve every --weights.

    A checkpoint of ours carries its config, so --weights may come alone; a lone --config
    (bench only) measures the randomly initialised variant.
    """
    weights, configs = list(weights or []), list(configs or [])
    if not weights and not configs:
        raise UserError(f"{command} needs --weights or --config (e.g. --config r50_giam)")
    for w in weights:
        if not w.is_file():
            raise UserError(f"--weights {w}: no such file; give the path of a .pth checkpoint")
    for c in dict.fromkeys(configs):
        load_config(c)  # an unknown zoo name or a broken YAML fails here, before any work
    if not weights:
        pairs = [(None, c) for c in configs]
    elif not configs:
        pairs = [(w, None) for w in weights]
    elif len(configs) == 1:
        pairs = [(w, configs[0]) for w in weights]
    elif len(configs) == len(weights):
        pairs = list(zip(weights, configs))
    else:
        raise UserError(
            f"got {len(weights)} --weights and {len(configs)} --config; give one --config for "
            "all weights or one per --weights, in the same order"
        )
    labels = [_stem(c) if c is not None else _stem(w) for w, c in pairs]
    if len(set(labels)) < len(labels):
        labels = [
            f"{lab} ({w.name})" if w is not None and labels.count(lab) > 1 else lab
            for lab, (w, _) in zip(labels, pairs)
        ]
    return [ModelSpec(w, c, lab) for (w, c), lab in zip(pairs, labels)]
