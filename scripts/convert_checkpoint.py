"""Convert an original ReferFormer checkpoint (github.com/wjn922/ReferFormer) into a `from_pretrained` folder.

    python scripts/convert_checkpoint.py --checkpoint ytvos_r50.pth --output_dir referformer-r50-ytvos --verify

The configuration is inferred from the weights (backbone family and sizes, text encoder, hidden size, layers,
queries, classes, mask head); what the weights cannot tell (attention heads vs. sampling points, dropout, loss
weights, ...) comes from the checkpoint's own `args`, from `--original_args` (a JSON object of the original
command-line arguments under their original names) or from the original defaults. Conversion is strict: every
original key must map onto the model and every model key must be filled, otherwise nothing is written.

OnlineRefer checkpoints (github.com/wudongming97/OnlineRefer) convert the same way: their track-embedding weights
(`track_embed.*`) make the model online (`config.online`, run frame by frame with `update_track`).

The output folder also gets a model card (README.md) naming the backbone, the training data and the scores the
authors report for that pair. The training data is read from the training arguments (`dataset_file`,
`pretrained_weights`) or given with `--training_data`:

    ref-youtube-vos          Ref-YouTube-VOS, fine-tuned from the RefCOCO/+/g pretraining weights
    ref-youtube-vos-scratch  Ref-YouTube-VOS from scratch (Video-Swin-T*)
    joint                    Ref-YouTube-VOS and RefCOCO/+/g jointly
    refcoco-pretrain         the RefCOCO/+/g pretraining weights
    a2d-sentences            A2D-Sentences, fine-tuned from the RefCOCO/+/g pretraining weights
    a2d-sentences-scratch    A2D-Sentences from scratch (Video-Swin-T*)

When neither tells, the card says the training data is unknown and lists no scores.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from referformer.cli_presets import error_line
from referformer.conversion import DEFAULT_TOKENIZER, convert_checkpoint
from referformer.model_cards import TRAINING_SETTINGS
from referformer.output_folders import check_output_target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="original .pth (dict with 'model') or .safetensors file")
    parser.add_argument("--output_dir", required=True, help="folder to write the converted model to")
    parser.add_argument(
        "--original_args",
        help="JSON file with the original command-line arguments (original names, e.g. nheads, dec_n_points)",
    )
    parser.add_argument(
        "--tokenizer",
        default=DEFAULT_TOKENIZER,
        help=f"RoBERTa tokenizer for the processor: a local folder or a Hub id (default {DEFAULT_TOKENIZER})",
    )
    parser.add_argument("--verify", action="store_true", help="run the converted model once on a random clip")
    parser.add_argument(
        "--training_data",
        choices=list(TRAINING_SETTINGS),
        help="training data of the checkpoint, for the model card (default: read from its training arguments)",
    )
    parser.add_argument(
        "--push_to_hub", metavar="REPO_ID", help="also upload the converted folder (with its model card) to this Hub repo"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    original_args = None
    if args.original_args:
        try:
            original_args = json.loads(Path(args.original_args).read_text())
        except (OSError, ValueError) as error:
            parser.error(f"--original_args {args.original_args} is not a readable JSON file: {error}")
        if not isinstance(original_args, dict):
            parser.error("--original_args must contain a JSON object")
    try:
        check_output_target(args.output_dir, overwrite=False, inputs=(args.checkpoint,), option=None)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    try:
        convert_checkpoint(
            args.checkpoint,
            args.output_dir,
            original_args,
            args.tokenizer,
            args.verify,
            args.push_to_hub,
            args.training_data,
        )
    except (ValueError, OSError) as error:  # ConversionError and bad files: one line, no traceback
        print(f"error: {error_line(error)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
