"""``detrforge data ...``: make and check COCO datasets, locally."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from detrforge.cli.client import fail as _fail
from detrforge.platform.errors import DetrforgeError

__all__ = ["data_app"]

data_app = typer.Typer(help="Make and check COCO datasets.", no_args_is_help=True)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Folder to write (must be empty or absent).")],
    seed: int = 0,
    classes: Annotated[int, typer.Option(help="Number of shape classes.")] = 1,
    train: Annotated[int, typer.Option(help="Training images.")] = 64,
    valid: Annotated[int, typer.Option(help="Validation images.")] = 16,
    test: Annotated[int, typer.Option(help="Test images.")] = 0,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 128,
    max_objects: int = 3,
    masks: Annotated[
        bool, typer.Option("--masks", help="Add each object's exact mask (polygons and RLE).")
    ] = False,
) -> None:
    """Write a deterministic synthetic COCO dataset (coloured shapes)."""
    from detrforge.detector.synthetic import synth_dataset

    try:
        info = synth_dataset(
            out,
            seed=seed,
            num_classes=classes,
            train_images=train,
            valid_images=valid,
            test_images=test,
            image_size=size,
            max_objects=max_objects,
            masks=masks,
        )
    except DetrforgeError as exc:
        _fail(exc.message, 2)
    typer.echo(f"wrote {out}: {info.num_images} images, classes {list(info.class_names)}")
    if masks:
        typer.echo(f"masks {info.num_masks}")
    typer.echo(f"fingerprint {info.fingerprint}")


@data_app.command("validate")
def data_validate(
    path: Path,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    masks: Annotated[
        bool, typer.Option("--masks", help="Require a mask on every object (segmentation).")
    ] = False,
) -> None:
    """Check a dataset in rfdetr's COCO layout; lists every problem with file and field.

    Masks (polygons, RLE) are checked wherever present; --masks also requires one per object.
    """
    from detrforge.detector.data import require_valid_dataset, validate_dataset

    problems = validate_dataset(path, require_masks=masks)
    if problems:
        if as_json:
            typer.echo(json.dumps({"valid": False, "problems": problems}, indent=2))
        else:
            for p in problems:
                typer.echo(f"{p['file']}: {p['field']}: {p['message']}")
            typer.secho(f"{len(problems)} problem(s)", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    info = require_valid_dataset(path, require_masks=masks)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "valid": True,
                    "fingerprint": info.fingerprint,
                    "classes": info.class_names,
                    "images": info.num_images,
                    "masks": info.num_masks,
                },
                indent=2,
            )
        )
    else:
        typer.echo(f"valid: {info.num_images} images, classes {list(info.class_names)}")
        if any(info.num_masks.values()):
            typer.echo(f"masks {info.num_masks}")
        typer.echo(f"fingerprint {info.fingerprint}")
