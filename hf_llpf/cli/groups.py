"""``hf-llpf groups``: print a model's Follow-Data-Flow stages (docs/cli.md#groups, docs/layer-groups.md)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("groups", help="print the Follow-Data-Flow stages of a model (layer groups, order, variance)")
    p.add_argument("model", help="endpoint (folder, .safetensors, Hub id) or built-in/timm model name (random init)")
    p.add_argument(
        "--data", help="data spec for the example batch (default: digits, or a text endpoint's own dummy inputs)"
    )
    p.add_argument("--image-size", type=int, help="resize the example images to this square size")
    p.add_argument("--model-args", help="JSON constructor arguments, e.g. '{\"num_classes\": 10}'")
    p.add_argument(
        "--overrides",
        dest="overrides_file",
        help="YAML file of stage overrides (list of {match, stage} or {stages: [...]})",
    )
    p.add_argument("--json", metavar="OUT", help="also write the plan as layer_groups.json to OUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from hf_llpf.cli.args import json_object
    from hf_llpf.cli.render import groups_notes
    from hf_llpf.run import check_out_dir
    from hf_llpf.run.inputs import check_example_options, example_for, example_plan
    from hf_llpf.stages import format_stage_table

    model_args = json_object(args.model_args, flag="--model-args")
    check_example_options(args.model, data=args.data, image_size=args.image_size)
    if args.json:
        check_out_dir(Path(args.json), field="--json", file=True)
    model, batch = example_for(args.model, data=args.data, image_size=args.image_size, model_args=model_args)
    plan = example_plan(model, batch, label=args.model, overrides=args.overrides_file)
    print(format_stage_table(plan, model))
    print(groups_notes(plan, overridden=bool(args.overrides_file)))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(plan.to_json(), indent=2) + "\n")
        print(f"wrote {out}")
    return 0
