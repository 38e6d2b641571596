import torch

PROMPTS = ["a cat", "a photo of a cat sitting on a red sofa next to a window in the afternoon light", ""]


def test_padded_batch_gives_each_prompt_its_own_features(tiny_pipe):
    enc = tiny_pipe.text_encoder
    ids, mask = enc.tokenize(PROMPTS)
    lengths = mask.sum(1)
    assert len(set(lengths.tolist())) == 3, "prompts must tokenize to different lengths for this test"
    # right padding: every row is ones then zeros
    for row, n in zip(mask, lengths):
        assert row[:n].all() and not row[n:].any()
    with torch.no_grad():
        batch_feats = enc.llm_features(PROMPTS)
        batch_cond, batch_mask = enc(PROMPTS)
        for i, prompt in enumerate(PROMPTS):
            alone = enc.llm_features([prompt])
            torch.testing.assert_close(batch_feats[i : i + 1], alone, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batch_cond[i : i + 1], enc([prompt])[0], atol=1e-5, rtol=1e-5)
    assert batch_feats.shape == (3, enc.num_queries, enc.llm.config.hidden_size)
    assert batch_cond.shape == (3, enc.num_queries, tiny_pipe.transformer.config.caption_channels)
    assert batch_mask.shape == (3, enc.num_queries) and batch_mask.all()


def test_position_ids_continue_after_real_tokens(tiny_pipe, monkeypatch):
    enc = tiny_pipe.text_encoder
    seen = {}
    original = enc.llm.base_model.forward

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(enc.llm.base_model, "forward", spy)
    with torch.no_grad():
        enc.llm_features(PROMPTS[:2])
    _, text_mask = enc.tokenize(PROMPTS[:2])
    short = int(text_mask[0].sum())
    pos, mask = seen["position_ids"], seen["attention_mask"]
    q = enc.num_queries
    assert torch.equal(pos[0, -q:], torch.arange(short, short + q))  # queries count on from the prompt's last token
    assert torch.equal(pos[1, -q:], torch.arange(int(text_mask[1].sum()), int(text_mask[1].sum()) + q))
    assert not mask[0, short : text_mask.shape[1]].any() and mask[0, -q:].all()


def test_template_wraps_the_prompt(tiny_pipe):
    enc = tiny_pipe.text_encoder
    ids, _ = enc.tokenize(["a red {prompt} house"])  # braces in a prompt are not a format string
    text = enc.tokenizer.decode(ids[0])
    assert text.startswith("<|im_start|>user\nGenerate an image: a red {prompt} house<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n<|vision_bos|>")


def test_llm_frozen_but_gradient_reaches_meta_queries(tiny_pipe):
    enc = tiny_pipe.text_encoder
    enc.meta_queries.grad = None
    cond, _ = enc(["a cat"])
    cond.square().mean().backward()
    assert enc.meta_queries.grad is not None and enc.meta_queries.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in enc.llm.parameters())
    assert all(p.grad is not None for p in enc.connector.parameters())
    enc.zero_grad(set_to_none=True)


def test_any_hf_causal_lm_folder_works(tiny_pipe, tmp_path):
    """Not just Qwen3: a Llama-architecture LM saved by transformers drives the same query path."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from sanaedit.models.text_encoder import MetaQueryTextEncoder

    tok = tiny_pipe.text_encoder.tokenizer
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    llm = AutoModelForCausalLM.from_pretrained(tmp_path / "llama")
    old = tiny_pipe.text_encoder
    enc = MetaQueryTextEncoder(llm, tok, old.meta_queries.data.clone(), old.connector, old.projector)
    with torch.no_grad():
        batch = enc(PROMPTS)[0]
        torch.testing.assert_close(batch[1:2], enc([PROMPTS[1]])[0], atol=1e-5, rtol=1e-5)
    assert batch.shape == (3, enc.num_queries, 24)
