"""One module per verb (or verb group). Each exposes ``register(subparsers)``.

``overunder.cli.main`` imports every module in this package, so adding a verb is adding a file.
A verb's handler has the signature ``run(args, ctx) -> int`` and is attached with
``parser.set_defaults(func=run)``.
"""
