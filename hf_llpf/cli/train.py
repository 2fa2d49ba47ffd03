"""``hf-llpf train``: train one endpoint (docs/cli.md#train)."""

from __future__ import annotations

import argparse

from hf_llpf.cli.args import add_settings_args, set_threads, threads


def register(sub) -> None:
    p = sub.add_parser("train", help="train one endpoint (model + data + seed + recipe)")
    p.add_argument(
        "model",
        nargs="?",
        help="built-in or timm model name (default: the recipe's, else small_cnn), or an endpoint folder / Hub id "
        "to fine-tune (text models: on text data, with their own tokenizer)",
    )
    p.add_argument("--data", help="data spec: 'digits', a Hub dataset id or a local file/folder (docs/data.md)")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", required=True, help="folder to write the model and metrics.json to")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model folder of this tool")
    p.add_argument("--threads", type=threads, default=1, help="torch CPU threads (1 is fastest on small models)")
    add_settings_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hf_llpf.cli.render import trained
    from hf_llpf.config import TrainRecipe, build
    from hf_llpf.recipes import apply_overrides, load_recipe
    from hf_llpf.training.endpoint import train_endpoint

    values = load_recipe(args.recipe)
    if args.model and "=" in args.model:  # no model name given: the first positional was an override
        args.overrides, args.model = [args.model, *args.overrides], None
    if args.model:
        values["model"] = args.model
    if args.data:
        values.setdefault("data", {})["source"] = args.data
    if args.seed is not None:
        values["seed"] = args.seed
    recipe = build(TrainRecipe, apply_overrides(values, args.overrides))
    set_threads(args.threads)
    _, metrics = train_endpoint(recipe, out_dir=args.out, overwrite=args.overwrite)
    print(trained(f"{recipe.model} seed {recipe.seed}", metrics, args.out))
    return 0
