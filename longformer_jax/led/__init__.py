"""The Longformer-Encoder-Decoder: the model (``model.py``), its configuration
(``config.py``), HF checkpoints in and out (``convert.py``) and generation
(``generation.py``). The model's and the configuration's names are re-exported here
(``led.create_model``, ``led.LEDForConditionalGeneration``, ``led.LEDConfig``...)."""

from longformer_jax.led.config import LEDConfig  # noqa: F401
from longformer_jax.led.model import (  # noqa: F401
    TASKS, Buffer, DecoderAttention, DecoderCache, DecoderLayer, LEDDecoder, LEDEncoder,
    LEDForConditionalGeneration, LEDModel, Seq2SeqOutput, create_model, shift_tokens_right)
