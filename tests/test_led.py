"""LED against HF transformers' PyTorch LED with the same (random) weights: encoder and
decoder outputs, the cached decoder, and the checkpoint round trip."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import longformer_jax as lj  # noqa: E402
from longformer_jax.led import model as led_lib  # noqa: E402
from longformer_jax.led import generation  # noqa: E402
from longformer_jax.led import convert as led_convert  # noqa: E402


def hf_led(tmp_path, **kw):
  torch.manual_seed(0)
  base = dict(vocab_size=60, d_model=32, encoder_layers=2, decoder_layers=2,
              encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
              decoder_ffn_dim=48, max_encoder_position_embeddings=256,
              max_decoder_position_embeddings=40, attention_window=[8, 8], dropout=0.0)
  base.update(kw)
  model = transformers.LEDForConditionalGeneration(transformers.LEDConfig(**base)).eval()
  with torch.no_grad():
    model.final_logits_bias.normal_()  # zeros at init: make the copy visible
  model.save_pretrained(tmp_path / "hf")
  return model


def inputs(b=2, n=45, t=7, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, 60, (b, n))
  mask = np.ones((b, n), np.int64)
  mask[1, 30:] = 0
  ids[1, 30:] = 1
  gmask = np.zeros((b, n), np.int64)
  gmask[0, [0, 17]] = 1
  gmask[1, [0, 5, 9]] = 1
  dec = rng.integers(3, 60, (b, t))
  dmask = np.ones((b, t), np.int64)
  dmask[1, 5:] = 0
  return ids, mask, gmask, dec, dmask


def test_encoder_and_decoder_match_hf(tmp_path):
  """fp32, per-example global masks, encoder padding, decoder padding."""
  hf = hf_led(tmp_path)
  ours = lj.from_hf(tmp_path / "hf", max_global_tokens=3)
  assert isinstance(ours, led_lib.LEDForConditionalGeneration)  # picked by model_type
  ids, mask, gmask, dec, dmask = inputs()
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             global_attention_mask=torch.tensor(gmask), decoder_input_ids=torch.tensor(dec),
             decoder_attention_mask=torch.tensor(dmask))
  out = ours(ids, mask, gmask, dec, dmask)
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(out.encoder_last_hidden_state)[valid],
                             ref.encoder_last_hidden_state.numpy()[valid], atol=1e-4, rtol=0)
  rows = dmask.astype(bool)
  np.testing.assert_allclose(np.asarray(out.logits)[rows], ref.logits.numpy()[rows],
                             atol=1e-4, rtol=0)


def test_loss_from_labels_matches_hf(tmp_path):
  hf = hf_led(tmp_path)
  ours = led_convert.from_hf(tmp_path / "hf", max_global_tokens=3)
  ids, mask, gmask, labels, _ = inputs()
  labels[1, 4:] = -100
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             global_attention_mask=torch.tensor(gmask), labels=torch.tensor(labels))
  out = ours(ids, mask, gmask, labels=labels)
  np.testing.assert_allclose(float(out.loss), float(ref.loss), rtol=1e-5)


def test_cached_decoding_equals_teacher_forcing(tmp_path):
  hf_led(tmp_path)
  model = led_convert.from_hf(tmp_path / "hf", max_global_tokens=3).led
  ids, mask, gmask, dec, _ = inputs()
  enc, enc_ok = model.encode(ids, mask, gmask, max_global_tokens=3)
  full = model.decoder(model.shared, jnp.asarray(dec), jnp.ones(dec.shape), enc, enc_ok)
  cache = model.decoder.init_cache(enc, enc_ok, 12)
  first, cache = model.decoder.step(model.shared, jnp.asarray(dec[:, :3]), cache)
  steps = [first]
  for i in range(3, dec.shape[1]):
    h, cache = model.decoder.step(model.shared, jnp.asarray(dec[:, i:i + 1]), cache)
    steps.append(h)
  np.testing.assert_allclose(np.asarray(jnp.concatenate(steps, 1)), np.asarray(full),
                             atol=1e-5, rtol=0)
  assert int(cache.length) == dec.shape[1]


def test_checkpoint_round_trip(tmp_path):
  """to_hf writes what transformers loads, with the same outputs."""
  hf_led(tmp_path)
  ours = led_convert.from_hf(tmp_path / "hf", max_global_tokens=3)
  led_convert.to_hf(ours, tmp_path / "again")
  back = transformers.LEDForConditionalGeneration.from_pretrained(tmp_path / "again").eval()
  ids, mask, gmask, dec, dmask = inputs()
  with torch.no_grad():
    ref = back(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
               global_attention_mask=torch.tensor(gmask), decoder_input_ids=torch.tensor(dec))
  out = ours(ids, mask, gmask, dec)
  np.testing.assert_allclose(np.asarray(out.logits), ref.logits.numpy(), atol=1e-4, rtol=0)


def test_unknown_or_missing_weights_are_named(tmp_path):
  hf_led(tmp_path)
  model = led_lib.create_model(led_convert.LEDConfig.from_json(tmp_path / "hf"))
  sd = lj.convert.load_state_dict(str(tmp_path / "hf"))
  with pytest.raises(ValueError, match="unknown keys"):
    led_convert.load_hf_weights(model, dict(sd, extra=np.zeros(3)))
  sd.pop("led.decoder.layers.1.fc2.weight")
  with pytest.raises(ValueError, match="fc2"):
    led_convert.load_hf_weights(model, sd)


def _generating_led(tmp_path, eos_bias=-4.0):
  """A random LED whose outputs vary (a wider init; EOS made less or more likely)."""
  hf = hf_led(tmp_path, init_std=0.3, max_encoder_position_embeddings=4200,
              max_decoder_position_embeddings=64)
  with torch.no_grad():
    hf.final_logits_bias[0, 2] = eos_bias
  hf.save_pretrained(tmp_path / "hf")
  return hf, lj.from_hf(tmp_path / "hf")


def _generation_inputs(n):
  """Two inputs of ``n`` tokens, the second padded after 2/3; global tokens per example."""
  rng = np.random.default_rng(1)
  ids = rng.integers(3, 60, (2, n))
  mask = np.ones((2, n), np.int64)
  mask[1, n * 2 // 3:] = 0
  gmask = np.zeros((2, n), np.int64)
  gmask[:, 0] = 1
  gmask[1, 7] = 1
  return ids, mask, gmask


def _same_ids_as_hf(hf, ours, inputs_, settings) -> np.ndarray:
  """HF generate's ids, after checking ours equal them (then pad to max_length)."""
  ids, mask, gmask = inputs_
  with torch.no_grad():
    ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                      global_attention_mask=torch.tensor(gmask), do_sample=False,
                      **settings).numpy()
  got = np.asarray(generation.generate(ours, ids, mask, gmask, **settings))
  np.testing.assert_array_equal(got[:, :ref.shape[1]], ref, err_msg=str(settings))
  assert (got[:, ref.shape[1]:] == 1).all()
  return ref


def test_greedy_generation_matches_hf(tmp_path):
  """Same token ids as HF generate, with per-example global masks and padding, plain
  and with min_length, no_repeat_ngram_size 3 and forced BOS / EOS."""
  hf, ours = _generating_led(tmp_path)
  for settings in (dict(max_length=30, num_beams=1),
                   dict(max_length=30, num_beams=1, min_length=12, no_repeat_ngram_size=3,
                        forced_bos_token_id=0, forced_eos_token_id=2)):
    ref = _same_ids_as_hf(hf, ours, _generation_inputs(45), settings)
    assert len(np.unique(ref[:, 1:])) > 2  # varied outputs, not one repeated token


def test_sampling_needs_a_key_and_top_k_1_is_greedy(tmp_path):
  _, ours = _generating_led(tmp_path)
  ids = np.random.default_rng(2).integers(3, 60, (2, 20))
  with pytest.raises(ValueError, match="key"):
    generation.generate(ours, ids, do_sample=True)
  greedy = generation.generate(ours, ids, max_length=16)
  top1 = generation.generate(ours, ids, max_length=16, do_sample=True, top_k=1,
                             key=jax.random.key(3))
  np.testing.assert_array_equal(np.asarray(top1), np.asarray(greedy))
  a, b = (generation.generate(ours, ids, max_length=16, do_sample=True, temperature=2.0,
                              key=jax.random.key(k)) for k in (4, 5))
  assert not np.array_equal(np.asarray(a), np.asarray(b))  # the key drives the draw


def test_top_p_keeps_the_smallest_set_reaching_p():
  """Closed form: probabilities 0.5, 0.3, 0.2; top_p 0.7 keeps the first two."""
  scores = jnp.log(jnp.asarray([[0.2, 0.5, 0.3]]))
  kept = generation.warp(generation.GenerationConfig(top_k=0, top_p=0.7), scores)
  np.testing.assert_array_equal(np.isfinite(np.asarray(kept)), [[False, True, True]])


def test_beam_search_matches_hf(tmp_path, n=4100):
  """Same ids as HF's beam search: 4 beams; with length_penalty 2, no_repeat_ngram_size
  3, min_length 10 and early stopping; 3 beams, length_penalty 0.5, "never". EOS is
  likely enough that hypotheses end at different lengths."""
  hf, ours = _generating_led(tmp_path, eos_bias=1.0)
  lengths = set()
  for settings in (dict(max_length=30, num_beams=4),
                   dict(max_length=30, num_beams=4, length_penalty=2.0, no_repeat_ngram_size=3,
                        min_length=10, early_stopping=True),
                   dict(max_length=24, num_beams=3, length_penalty=0.5, early_stopping="never")):
    lengths.add(_same_ids_as_hf(hf, ours, _generation_inputs(n), settings).shape[1])
  assert len(lengths) > 1  # EOS ended some searches early


def test_beam_sampling_is_refused_by_name(tmp_path):
  _, ours = _generating_led(tmp_path)
  with pytest.raises(NotImplementedError, match="num_beams"):
    generation.generate(ours, np.ones((1, 8), np.int64) * 5, num_beams=4, do_sample=True,
                        key=jax.random.key(0))


def test_bart_to_led_is_bart_while_the_window_covers_the_input(tmp_path):
  """Closed form: with a window wider than the input every token sees every other, so
  the converted LED computes BART's logits (global or not: global Q/K/V are copies)."""
  torch.manual_seed(0)
  bart = transformers.BartForConditionalGeneration(transformers.BartConfig(
      vocab_size=60, d_model=32, encoder_layers=2, decoder_layers=2,
      encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
      decoder_ffn_dim=48, max_position_embeddings=64, dropout=0.0)).eval()
  bart.save_pretrained(tmp_path / "bart")
  lj.convert.main(["bart-to-led", str(tmp_path / "bart"), str(tmp_path / "led"),
                   "--max-length", "200", "--attention-window", "128"])
  ours = lj.from_hf(tmp_path / "led")
  assert ours.config.max_encoder_position_embeddings == 200
  table = np.asarray(ours.led.encoder.embed_positions.embedding[...])
  np.testing.assert_array_equal(table[64:128], table[:64])  # learned rows, copied
  ids, mask, _, dec, _ = inputs(n=40)
  with torch.no_grad():
    ref = bart(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
               decoder_input_ids=torch.tensor(dec)).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours(ids, mask, None, dec).logits), ref, atol=1e-4,
                             rtol=0)
  hf_led_model = transformers.LEDForConditionalGeneration.from_pretrained(tmp_path / "led")
  with torch.no_grad():
    theirs = hf_led_model.eval()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                                 decoder_input_ids=torch.tensor(dec)).logits.numpy()
  np.testing.assert_allclose(theirs, ref, atol=1e-4, rtol=0)
