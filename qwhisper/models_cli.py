"""`qwhisper download NAME`: resolve a model name into the cache (convert, quantize or download)."""

from .models import MODEL_NAMES, resolve_model


def add_arguments(parser) -> None:
    parser.add_argument("model", help=f"model name ({', '.join(MODEL_NAMES)}; optional -q5_1-style suffix)")


def run(args) -> int:
    print(resolve_model(args.model))
    return 0
