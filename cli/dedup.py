"""The dedup command: SemDeDup over a finished run, and a keep-list the trainer honours
(``pipelines.semdedup``)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cli.app import app
from cli.render import console, stdout
from pipelines.semdedup import DedupReport, SemDeDupConfig, rewrite_shards, semdedup, write_report


@app.command()
def dedup(
    run_dir: Annotated[
        str,
        typer.Argument(help="the --out of dataengine run (with embeddings/): a folder or a URL (s3://...)"),
    ],
    eps: Annotated[
        float,
        typer.Option(
            help="duplicates: cosine similarity above 1 - eps to a clip before them in their cluster"
        ),
    ] = 0.05,
    clusters: Annotated[
        int | None, typer.Option(min=1, help="k of k-means (default: ceil(sqrt(n / 2)))")
    ] = None,
    seed: Annotated[int, typer.Option(help="k-means seed: same seed, same result")] = 0,
    rewrite: Annotated[
        str | None,
        typer.Option(help="also write a new run here (a folder or a URL) holding only the kept samples"),
    ] = None,
) -> None:
    """Semantic deduplication (SemDeDup) of a run's ok clips, by their clip embeddings.

    k-means groups the embeddings; inside each cluster the clips are ordered farthest from the centroid
    first, and a clip is removed when its cosine similarity to a clip before it is above 1 - eps (so a
    larger eps removes more). Shards are not touched; it writes RUN_DIR/dedup/: keep.parquet (clip_id of
    every kept ok clip: give it to the trainer with --set data.keep_list=RUN_DIR), removed.parquet
    (clip_id, duplicate_of, similarity, cluster), report.json (config, counts, the eps sweep) and
    similarity.png (each clip's highest similarity inside its cluster, the eps thresholds marked).
    RUN_DIR may be a URL (s3://bucket/run): dedup/ is written there.

    dataengine dedup out/run --eps 0.05 --rewrite out/run-dedup

    Needs a run written with an embedder (e.g. --set filters.embed.kind=descriptor); exit code 1 otherwise.
    """  # fmt: skip
    config = SemDeDupConfig(eps=eps, clusters=clusters, seed=seed)
    with console.status(f"SemDeDup of {run_dir}"):
        report = semdedup(run_dir, config)
        folder = write_report(run_dir, report)
    print_dedup(report, folder)
    if rewrite is not None:
        with console.status(f"writing the kept samples to {rewrite}"):
            written = rewrite_shards(run_dir, rewrite, report.keep)
        stdout.print(f"rewrote {written} kept samples to [bold]{rewrite}[/]")


def print_dedup(report: DedupReport, folder: str) -> None:
    total = report.n + len(report.not_embedded)
    table = Table("eps", "similarity >", "removed", "kept %", title=f"SemDeDup eps sweep ({total} ok clips)")
    for eps, removed in sorted(report.sweep.items()):
        chosen = eps == report.config.eps
        table.add_row(
            f"[bold]{eps:g} *[/]" if chosen else f"{eps:g}",
            f"{1 - eps:.3f}",
            str(removed),
            f"{100 * (total - removed) / max(total, 1):.1f}",
        )
    stdout.print(table)
    stdout.print(
        f"{report.n} clips with {report.dim}-d embeddings in {report.clusters} clusters; "
        f"at eps={report.config.eps:g} keeps {len(report.keep)}, removes {len(report.removed)}"
    )
    if report.not_embedded:
        stdout.print(f"[yellow]{len(report.not_embedded)} ok clips have no embedding: kept[/]")
    stdout.print(f"report: [bold]{folder}[/] (keep.parquet, removed.parquet, report.json, similarity.png)")
