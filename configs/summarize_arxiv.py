"""arXiv summarisation with the Longformer-Encoder-Decoder (paper section 7: LED-large
16K reaches ROUGE-1/2/L 46.63 / 19.62 / 41.83 on the test set).

Data: tfds ``scientific_papers/arxiv`` as array_record files (``article`` ->
``abstract``; ``python -m longformer_jax.prepare scientific_papers/arxiv DIR``, with
the ``prepare`` extra); or JSONL files with ``--config.data.format=jsonl``
and ``document`` / ``summary`` fields. Start from an LED directory (HF's
``led-large-16384``, or ``python -m longformer_jax.convert bart-to-led`` of
``bart-large``):

    python -m longformer_jax.main --config=configs/summarize_arxiv.py --workdir=/tmp/led_arxiv \\
        --config.init_from_hf=/path/to/led-large-16384

The paper's settings: inputs of 16,384 tokens, encoder window 1,024 (the
checkpoint's), global attention on the first token, full attention in the decoder.
The paper does not list the fine-tuning schedule; this config uses BART's
summarisation fine-tuning values (LR 3e-5, label smoothing 0.1, batch 32,
abstracts cut to 512 tokens) for 5 epochs, and beam search as the LED and BART
summaries are decoded (4 beams, length penalty 2.0, no repeated trigram, up to 512
tokens). ``:tiny`` is a 2-step random-init run on small JSONL files.
"""

from longformer_jax import recipes

ARXIV = "tensorflow_datasets/scientific_papers/arxiv/1.1.1"  # under recipes.default_path
LED_CHECKPOINT = "led-large-16384"  # an HF LED directory, under recipes.default_path
TRAIN_EXAMPLES = 203_037


def get_config(variant: str = ""):
  arxiv = recipes.default_path(ARXIV)
  c = recipes.finetune_config(
      "seq2seq",
      dict(name="summarization", format="tfds",
           files=dict(train=f"{arxiv}:train", validation=f"{arxiv}:validation",
                      test=f"{arxiv}:test"),
           text_field="article", summary_field="abstract", max_target_length=512),
      train_steps=recipes.steps_for(5, TRAIN_EXAMPLES, 32), seq_len=16_384,
      eval_every=5_000)
  c.init_from_hf = recipes.default_path(LED_CHECKPOINT)
  # With init_from_hf these only set how to run the checkpoint.
  c.model = dict(dropout=0.1, attention_dropout=0.0, max_global_tokens=1, dtype="bfloat16",
                 remat="matmuls", block_size=128, attention_impl="auto")
  c.optim.grad_accum = 4  # batch 32 of 16K-token documents: 8 devices x 1 x 4 micro-steps
  c.eval_batches = 50  # generating 4 beams x 512 tokens: evaluate on a sample while training
  c.seq2seq = dict(label_smoothing=0.1, generate=True, generation=dict(
      num_beams=4, max_length=512, min_length=0, length_penalty=2.0, no_repeat_ngram_size=3,
      early_stopping=True))
  if variant == "tiny":
    return tiny(c)
  if variant:
    raise ValueError(f"unknown variant {variant!r} of configs/summarize_arxiv.py")
  return c


def tiny(c):
  """A random-init 2 + 2-layer LED on JSONL files (``document``, ``summary``), 2 steps."""
  c = recipes.tiny_finetune(c)
  c.model = dict(vocab_size=-1, d_model=32, encoder_layers=2, decoder_layers=2,
                 encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                 decoder_ffn_dim=64, max_encoder_position_embeddings=c.seq_len,
                 max_decoder_position_embeddings=32, attention_window=16, dropout=0.1,
                 max_global_tokens=1, dtype="float32", remat="none", block_size=8,
                 attention_impl="auto")
  c.optim.grad_accum = 1
  c.eval_batches = 0
  c.data.update(format="jsonl", text_field="document", summary_field="summary",
                max_target_length=16)
  c.data.files.update(train="", validation="", test="")
  c.seq2seq.generation = dict(num_beams=2, max_length=16, length_penalty=2.0,
                              no_repeat_ngram_size=3, early_stopping=True)
  return c
