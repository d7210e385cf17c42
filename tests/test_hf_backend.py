import json

import pytest
import torch
from PIL import Image

from lmmr1_core import load_model
from lmmr1_core.errors import DataError


def single_logprob(backend, prompt, completion):
    """Log-probs of one completion alone, unpadded: what the padded batch must reproduce."""
    ids = torch.tensor([prompt.input_ids + completion])
    kw = {}
    if prompt.pixel_values is not None:  # what transformers' own processor hands the model
        kw = {"pixel_values": prompt.pixel_values, "image_grid_thw": prompt.image_grid_thw,
              "mm_token_type_ids": (ids == backend.model.config.image_token_id).int()}  # fmt: skip
    with torch.no_grad():
        logits = backend.model(input_ids=ids, use_cache=False, **kw).logits[0].float()
    logits[:, backend.suppress] = float("-inf")  # never sampled: outside the policy's distribution
    logp = torch.log_softmax(logits[len(prompt.input_ids) - 1 : -1], dim=-1)
    return logp.gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1)


@pytest.fixture(scope="module")
def text_backend(tiny_text):
    return load_model("hf", path=str(tiny_text))


def test_padded_batch_logprobs_match_each_sequence_alone(text_backend):
    b = text_backend
    prompts = [
        b.encode([{"role": "user", "content": t}]) for t in ["What is 1 + 2?", "Hi", "A much longer prompt here"]
    ]
    completions = [[10, 11, 12, 13], [14], [15, 16, 17]]
    assert len({len(p.input_ids) for p in prompts}) == 3  # really padded
    with torch.no_grad():
        logp, mask, _ = b.logprobs(prompts, completions)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        assert mask[i].sum() == len(c)
        torch.testing.assert_close(logp[i, : len(c)], single_logprob(b, p, c), atol=1e-5, rtol=0)
        assert torch.all(logp[i, len(c) :] == 0)


def test_generate_stops_at_eos_and_decodes(text_backend):
    b = text_backend
    torch.manual_seed(0)
    prompts = [b.encode([{"role": "user", "content": "What is 2 + 2?"}])] * 4
    outs = b.generate(prompts, max_new_tokens=12)
    assert len(outs) == 4
    for c in outs:
        assert 1 <= len(c) <= 12
        assert all(t not in b.eos_ids for t in c[:-1])  # nothing after the first EOS
        assert b.pad_id not in c[:-1]
        assert isinstance(b.decode(c), str)


def test_vl_image_placeholders_equal_image_features(tiny_vl, tmp_path):
    b = load_model("hf", path=str(tiny_vl))
    assert b.is_vl and b.processor is None  # the torchvision-free path on this machine
    img = tmp_path / "red.png"
    Image.new("RGB", (90, 60), (200, 10, 10)).save(img)
    msgs = [
        {
            "role": "user",
            "content": [{"type": "image", "image": str(img)}, {"type": "text", "text": "color?"}],
        }
    ]
    prompt = b.encode(msgs, [str(img)], "s1")
    n_pad = prompt.input_ids.count(b.model.config.image_token_id)
    merge = b.image_processor.merge_size**2
    assert n_pad == int(prompt.image_grid_thw.prod()) // merge
    assert prompt.pixel_values.shape[0] == int(prompt.image_grid_thw.prod())
    assert b.model.config.image_token_id in b.suppress  # never sampled
    # the model accepts it, and a left-padded batch with a text-only neighbour scores the same
    other = b.encode([{"role": "user", "content": "no image, a longer prompt than the other one is"}])
    with torch.no_grad():
        logp, _, _ = b.logprobs([prompt, other], [[50, 60, 70], [80, 90]])
    torch.testing.assert_close(logp[0], single_logprob(b, prompt, [50, 60, 70]), atol=1e-5, rtol=0)
    torch.testing.assert_close(logp[1, :2], single_logprob(b, other, [80, 90]), atol=1e-5, rtol=0)
    # the image's 3-D positions matter: 1-D positions (no mm_token_type_ids) score it differently
    ids = torch.tensor([prompt.input_ids + [50, 60, 70]])
    with torch.no_grad():
        flat = b.model(input_ids=ids, pixel_values=prompt.pixel_values, image_grid_thw=prompt.image_grid_thw).logits
    flat = flat[0, -4:-1].float().index_fill(-1, torch.tensor(b.suppress), float("-inf"))
    flat_logp = torch.log_softmax(flat, -1).gather(-1, torch.tensor([[50], [60], [70]])).squeeze(-1)
    assert (flat_logp - logp[0]).abs().max() > 1e-4


def test_vl_image_errors_name_the_sample(tiny_vl, tmp_path):
    b = load_model("hf", path=str(tiny_vl))
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"not a png")
    msgs = [{"role": "user", "content": [{"type": "image", "image": str(bad)}, {"type": "text", "text": "?"}]}]
    with pytest.raises(DataError, match=r"sample s9: cannot read image .*corrupt.png"):
        b.encode(msgs, [str(bad)], "s9")
    with pytest.raises(DataError, match="sample s9: 2 images but 1 image placeholders"):
        b.encode(msgs, [str(bad), str(bad)], "s9")


def test_save_keeps_source_files_verbatim_and_reloads(text_backend, tiny_text, tmp_path):
    out = tmp_path / "ckpt"
    text_backend.save(out)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (tiny_text / name).read_bytes(), name
    again = load_model("hf", path=str(out))
    for (k, v), (k2, v2) in zip(text_backend.model.state_dict().items(), again.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2"
