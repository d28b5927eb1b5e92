"""Data layer. One module per concern:

``images``      decode any image file to upright RGB; check readability
``index``       the prepared-dataset format (manifest + per-split JSONL) written by ``data_prep``
``tokenizer``   BERT-uncased WordPiece captions, 64 tokens
``transforms``  train augmentation / eval resize
``datasets``    caption pairs (training), retrieval splits (evaluation), the batch collator
``webdataset_source``  pairs streamed from img2dataset tar shards
"""
