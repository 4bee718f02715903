"""Publish a saved CCR model folder, or the MRV evaluate module, to the Hugging Face Hub.

    python hub_scripts/push.py outputs/ccr-emoji --repo-id my-user/ccr-1tok-emoji
    python hub_scripts/push.py outputs/ccr-emoji --repo-id my-user/ccr-1tok-emoji --dry-run
    python hub_scripts/push.py --metric evaluate_metrics/mrv --repo-id my-user/mrv

The folder is checked before anything is sent; the whole folder goes up as one commit. The commit hash
printed at the end is what users should pin with `revision=` (trust_remote_code runs the repository's
code). The token comes from HF_TOKEN or the cached login and is never printed. HF_ENDPOINT selects
another Hub endpoint. Exit status: 0 on success, 2 when the folder or an argument is refused, 1 for any other failure (one-line
message on stderr; --debug or CCR_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_ccr.cli import run_cli  # noqa: E402
from modeling_ccr.hub_upload import PushResult, push_metric, push_model  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", nargs="?", help="saved model folder (save_pretrained + eval_results.json)")
    parser.add_argument("--metric", metavar="METRIC_DIR", help="publish this evaluate module folder as a Space")
    parser.add_argument("--repo-id", required=True, help="NAMESPACE/NAME of the repository (a Space for --metric)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to commit to (created from main if missing; default main)")
    parser.add_argument("--commit-message", help="commit title")
    parser.add_argument("--template", help="model card template (default: MODEL_CARD.md of this package)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded; contact nothing")
    args = parser.parse_args(argv)
    if (args.model_dir is None) == (args.metric is None):
        parser.error("give either MODEL_DIR or --metric METRIC_DIR")
    if args.metric and args.template:
        parser.error("--template applies to model folders only")
    return args


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def report(result: PushResult) -> str:
    kind = "Space" if result.repo_type == "space" else "model repository"
    lines = []
    if result.dry_run:
        lines.append(f"dry run: nothing was sent. Would commit {len(result.files)} files to {kind} "
                     f"{result.repo_id} (branch {result.revision}) at {result.endpoint}:")
    else:
        lines.append(f"committed {len(result.files)} files to {kind} {result.repo_id} (branch {result.revision}):")
    for f in result.files:
        lines.append(f"  {f.path_in_repo:<40} {_size(f.size):>10}" + (f"  ({f.note})" if f.note else ""))
    if result.skipped:
        lines.append("left out:")
        lines += [f"  {s}" for s in result.skipped]
    if result.dry_run:
        lines += ["", "----- README.md (rendered) -----", result.card.rstrip(), "----- end of README.md -----"]
    else:
        lines.append(f"commit URL: {result.commit_url}")
        lines.append(f"commit hash: {result.commit_oid}")
        if result.repo_type == "space":
            lines.append(f'load it with: evaluate.load("{result.repo_id}", revision="{result.commit_oid}")')
        else:
            lines.append(f'pin it: AutoModel.from_pretrained("{result.repo_id}", trust_remote_code=True, '
                         f'revision="{result.commit_oid}")')
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # HF_ENDPOINT is read here, not only when huggingface_hub is imported, so callers can set it late.
    common = dict(private=args.private, revision=args.revision, commit_message=args.commit_message,
                  dry_run=args.dry_run, endpoint=os.environ.get("HF_ENDPOINT"))
    if args.metric:
        result = push_metric(args.metric, args.repo_id, **common)
    else:
        result = push_model(args.model_dir, args.repo_id, template=args.template, **common)
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
