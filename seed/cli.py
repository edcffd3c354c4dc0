"""The ``seed`` command line: parses options and calls the Python API, nothing more."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from seed.errors import SeedError

app = typer.Typer(
    name="seed",
    help="SEED: identify, isolate and purge hallucinations, then distil them away (self-evolving distillation).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
world_app = typer.Typer(help="The embedded world: procedurally drawn COCO-format scenes and a tiny LLaVA model.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate hallucination: POPE (random, popular, adversarial) and CHAIR.", no_args_is_help=True)
app.add_typer(world_app, name="world")
app.add_typer(eval_app, name="eval")

console = Console(stderr=True)

DeviceOpt = typer.Option("auto", "--device", help="auto, cpu or cuda[:N].")


# --------------------------------------------------------------------------- world
@world_app.command("build")
def world_build(
    out: Optional[Path] = typer.Option(None, help="Folder of the world (default: the cache, ~/.cache/seed)."),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same world."),
    bias: bool = typer.Option(True, "--bias/--no-bias", help="Plant co-occurrence bias in the training text (off = control world)."),
    force: bool = typer.Option(False, help="Rebuild even if a finished world is there."),
    device: str = DeviceOpt,
) -> None:
    """Draw the scenes and train the tiny LLaVA model (cached: a second call reuses it)."""
    from seed.world import build_world

    path = build_world(out, seed=seed, bias=bias, force=force, device=device)
    typer.echo(str(path))


def main() -> None:
    """Console entry point: user mistakes become one line on stderr and exit code 2."""
    try:
        app()
    except SeedError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
