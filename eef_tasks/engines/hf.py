"""The hf engine: a transformers causal LM (optionally with a LoRA adapter) in this process,
sampling many conversations at once with **per-conversation KV-cache reuse**.

Each conversation (`Session`) keeps the token ids whose keys/values are cached and the cache itself
(one `(key, value)` pair per layer, shape `[1, heads, length, dim]`). On every turn the *whole*
conversation is rendered with the tokenizer's chat template (so the prompt is exactly what training
sees); the longest common prefix with the cached ids is kept (the cache is cropped there) and only
the rest — in practice the new observation and the assistant header, plus the previous reply's
end-of-turn token — is fed to the model. A reply that was re-formatted before going into the chat
(e.g. by `parse_action`) simply shares a shorter prefix: correctness never depends on the cache.

Batching caches of different lengths: for one `generate` call the rows' caches are **left-padded**
to the longest cached length, the rows' new tokens are **right-padded** after it, and padded slots
are masked out (2-D attention mask with holes) while `position_ids` continue each row's own
positions. No query ever sees only masked keys (so no NaNs from fully masked rows); the first
sampled token of each row is read from the hidden state of its own last new token. The decode loop
then feeds one token per row (finished rows feed a masked pad) until every row produced the
end-of-turn token or `max_new_tokens`. The batch's keys and values live in buffers sized for the
whole call (`BufferLayer`): each step writes its token in place instead of concatenating the whole
cache, and on CPU attention runs SDPA on the 3 key/value heads directly (`_use_gqa_sdpa`). Afterwards each row's cache is cut back out of the batch
(only unmasked slots), so the next call may batch any other set of conversations. Sampling uses one
`torch.Generator` per conversation, so a sample does not depend on its batch-mates (up to
floating-point differences of batched matmuls).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eef_tasks.engines import Generation, SamplingConfig, Session
from eef_tasks.envs.base import EnvError
from eef_tasks.models import is_full_checkpoint, quiet_peft, resolve_model
from eef_tasks.precision import choose_precision, load_causal_lm

ENGINE_NAME = "hf"


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


_GQA_ATTENTION = "eef_sdpa_gqa"


def _use_gqa_sdpa(model: Any) -> None:
    """Let the engine's model attend with `scaled_dot_product_attention(..., enable_gqa=True)` on CPU.

    transformers' sdpa path copies the 3 key/value heads out to SmolLM2's 9 query heads whenever a
    mask is given (it always is here: the batch's caches are left-padded), because its CUDA flash
    kernels cannot mask grouped queries; the CPU kernel can, with the same result: 1.4x to 4.5x
    faster per attention call for batches of 4 to 16 one-token queries over 1,100 keys, 2.8x for 64
    new tokens (measured 2026-12-03, before stop 29). Only this engine's model: training keeps transformers' sdpa."""
    import torch
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    def attend(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
               scaling: float | None = None, is_causal: bool | None = None, **kwargs: Any) -> tuple[Any, None]:
        if attention_mask is not None:
            attention_mask = attention_mask[:, :, :, : key.shape[-2]]
        causal = query.shape[2] > 1 and attention_mask is None and (
            is_causal if is_causal is not None else getattr(module, "is_causal", True))
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=causal,
            enable_gqa=key.shape[1] != query.shape[1],
        )
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register(_GQA_ATTENTION, attend)
    AttentionMaskInterface.register(_GQA_ATTENTION, sdpa_mask)
    model.set_attn_implementation(_GQA_ATTENTION)


_NUCLEUS_K = 1024  # candidates searched for the top-p nucleus before sorting the whole vocabulary


def _buffer_layer_class() -> type:
    """A transformers cache layer over preallocated `[batch, heads, capacity, dim]` buffers: `update`
    writes the new keys and values in place after the used slots and returns views of the used
    slots, so a decode step costs no copy of the whole cache (DynamicLayer concatenates)."""
    from transformers.cache_utils import DynamicLayer

    class BufferLayer(DynamicLayer):
        def __init__(self, keys: Any, values: Any, length: int, capacity: int | None = None) -> None:
            super().__init__()
            self.buf_k, self.buf_v, self.length = keys, values, length
            self.capacity = keys.shape[2] if keys is not None else int(capacity or 0)
            if keys is not None:
                self.device, self.is_initialized = keys.device, True
                self.keys, self.values = keys[:, :, :length], values[:, :, :length]

        def lazy_initialization(self, key_states: Any, value_states: Any) -> None:
            import torch

            b, h, _, d = key_states.shape
            self.device = key_states.device
            self.buf_k = torch.zeros((b, h, self.capacity, d), dtype=key_states.dtype, device=self.device)
            self.buf_v = torch.zeros((b, h, self.capacity, value_states.shape[3]), dtype=value_states.dtype,
                                     device=self.device)
            self.is_initialized = True

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = key_states.shape[-2]
            if self.length + n > self.capacity:
                raise RuntimeError(f"KV buffer of {self.capacity} slots overflows at {self.length + n}")
            self.buf_k[:, :, self.length : self.length + n] = key_states
            self.buf_v[:, :, self.length : self.length + n] = value_states
            self.length += n
            self.keys, self.values = self.buf_k[:, :, : self.length], self.buf_v[:, :, : self.length]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

    return BufferLayer


def _BufferLayer(keys: Any, values: Any, length: int, capacity: int | None = None) -> Any:  # noqa: N802
    global _BUFFER_LAYER
    if _BUFFER_LAYER is None:
        _BUFFER_LAYER = _buffer_layer_class()
    return _BUFFER_LAYER(keys, values, length, capacity)


_BUFFER_LAYER: Any = None


def nucleus(probs: Any, top_p: float, k: int | None = None) -> Any:
    """`probs` (rows of distributions) with everything outside each row's top-p nucleus zeroed, in
    vocabulary order: the nucleus is every token at least as likely as the least likely of the
    smallest set of most likely tokens whose mass reaches `top_p` (ties at that edge all kept).

    That edge is found among the `k` most likely tokens when their mass reaches top_p (nearly
    always; a sort of the whole vocabulary is the fallback): a top-k of 1,024 instead of a sort of
    49,152 per decode step. The draw stays over the whole vocabulary in its own order: a draw in
    sorted order would hand a generator's numbers to other tokens whenever batched floating-point
    noise reorders near-ties, and one sample would depend on its batch-mates."""
    k = min(_NUCLEUS_K if k is None else k, probs.shape[-1])
    cand = probs.topk(k, dim=-1).values
    if k < probs.shape[-1] and bool((cand.sum(dim=-1) < top_p).any()):
        cand = probs.sort(dim=-1, descending=True).values
    n_keep = ((cand.cumsum(dim=-1) - cand) < top_p).sum(dim=-1, keepdim=True)
    floor = cand.gather(-1, n_keep.clamp(min=1) - 1)
    return probs.masked_fill(probs < floor, 0.0)


class HFEngine:
    """A transformers causal LM (optionally with a LoRA adapter) sampling many chats at once."""

    name = ENGINE_NAME

    def __init__(
        self,
        model_path: str | Path | None = None,
        adapter_dir: str | Path | None = None,
        *,
        device: str | None = None,
        dtype: Any = None,
        max_batch_size: int = 32,
        merge_adapter: bool = True,
    ) -> None:
        # torch and transformers are heavy: imported only when an hf engine is used
        import torch
        from transformers import AutoTokenizer

        if is_full_checkpoint(adapter_dir):  # finetune='full': the trained folder is the whole model
            self.model_path, self.adapter_dir = str(Path(adapter_dir).resolve()), None
        else:  # (the default base is converted on first use: only when it is the model)
            self.model_path = resolve_model(str(model_path) if model_path is not None else None)
            self.adapter_dir = str(adapter_dir) if adapter_dir else None
        # dtype None: bf16 where the device multiplies it natively, else float32; SDPA attention
        self.precision = choose_precision(device, "auto" if dtype is None else str(dtype).removeprefix("torch."))
        self.device = torch.device(self.precision.device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        model = load_causal_lm(self.model_path, self.precision)
        if self.adapter_dir:
            try:  # peft is optional: only adapters need it
                from peft import PeftModel
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise EnvError("a LoRA adapter needs the `peft` package: pip install 'peft==0.21.*'") from exc
            with quiet_peft():
                model = PeftModel.from_pretrained(model, self.adapter_dir)
            if merge_adapter:
                model = model.merge_and_unload()
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu" and self.precision.attn_implementation == "sdpa":
            _use_gqa_sdpa(self.model)
        self.max_batch_size = max_batch_size
        self.n_layers = int(self.model.config.num_hidden_layers)
        tok = self.tokenizer
        stop = {tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id}
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        stop |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.stop_ids = {i for i in stop if isinstance(i, int) and i >= 0 and i != tok.unk_token_id}
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else next(iter(self.stop_ids))

    # -- prompts --

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )

    def prompt_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The chat template's prompt for `messages` (with the assistant header), as token ids."""
        return list(self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"])

    def session(self, key: str, seed: int = 0) -> Session:
        import torch

        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed)
        return Session(key=key, seed=seed, generator=generator)

    # -- generation --

    def generate(
        self, requests: Sequence[tuple[Session, Sequence[dict[str, str]]]], sampling: SamplingConfig
    ) -> list[Generation]:
        """One reply per (session, messages), batched `max_batch_size` at a time."""
        out: list[Generation] = []
        for start in range(0, len(requests), self.max_batch_size):
            chunk = requests[start : start + self.max_batch_size]
            out.extend(self._generate_batch([(s, self.prompt_ids(m)) for s, m in chunk], sampling))
        return out

    def generate_ids(
        self, requests: Sequence[tuple[Session, list[int]]], sampling: SamplingConfig
    ) -> list[Generation]:
        out: list[Generation] = []
        for start in range(0, len(requests), self.max_batch_size):
            out.extend(self._generate_batch(list(requests[start : start + self.max_batch_size]), sampling))
        return out

    def _generate_batch(
        self, requests: list[tuple[Session, list[int]]], sampling: SamplingConfig
    ) -> list[Generation]:
        import torch
        from transformers import DynamicCache

        dev = self.device
        B = len(requests)
        keep: list[int] = []
        new: list[list[int]] = []
        for session, target in requests:
            if not target:
                raise ValueError("empty prompt")
            n = _common_prefix(session.cache_ids, target) if session.cache is not None else 0
            n = min(n, len(target) - 1)  # always feed at least one token
            keep.append(n)
            new.append(list(target[n:]))
        max_l, max_n = max(keep), max(len(x) for x in new)

        # batch cache: row r's cached slots right-aligned in [0, max_l), in buffers with room for the
        # new tokens and the replies (written in place: no per-step concatenation of the whole cache)
        capacity = max_l + max_n + sampling.max_new_tokens
        cache = DynamicCache()
        if max_l > 0:
            ref = next(s.cache for (s, _), n in zip(requests, keep, strict=True) if n > 0)
            layers = []
            for li, (k0, v0) in enumerate(ref):
                k = torch.zeros((B, k0.shape[1], capacity, k0.shape[3]), dtype=k0.dtype, device=dev)
                v = torch.zeros((B, v0.shape[1], capacity, v0.shape[3]), dtype=v0.dtype, device=dev)
                for r, ((session, _), n) in enumerate(zip(requests, keep, strict=True)):
                    if n > 0:
                        sk, sv = session.cache[li]
                        k[r, :, max_l - n : max_l] = sk[0, :, :n]
                        v[r, :, max_l - n : max_l] = sv[0, :, :n]
                layers.append(_BufferLayer(k, v, max_l))
            cache.layers = layers
        else:
            cache.layers = [_BufferLayer(None, None, 0, capacity) for _ in range(self.n_layers)]

        mask = torch.zeros((B, max_l + max_n), dtype=torch.long, device=dev)
        input_ids = torch.full((B, max_n), self.pad_id, dtype=torch.long, device=dev)
        position_ids = torch.zeros((B, max_n), dtype=torch.long, device=dev)
        for r, (n, ids) in enumerate(zip(keep, new, strict=True)):
            mask[r, max_l - n : max_l] = 1
            mask[r, max_l : max_l + len(ids)] = 1
            input_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            position_ids[r] = torch.arange(n, n + max_n)  # pads continue: harmless, masked
        last = torch.tensor([len(ids) - 1 for ids in new], device=dev)
        next_pos = torch.tensor([n + len(ids) for n, ids in zip(keep, new, strict=True)], device=dev)

        generated: list[list[int]] = [[] for _ in range(B)]
        finished = [False] * B
        reasons = ["length"] * B
        with torch.inference_mode():
            out = self.model.model(
                input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                cache=cache, use_cache=True,
            ) if hasattr(self.model, "model") and hasattr(self.model, "lm_head") else None
            if out is not None:
                hidden = out.last_hidden_state[torch.arange(B, device=dev), last]
                logits = self.model.lm_head(hidden)
            else:  # pragma: no cover - models without the usual .model/.lm_head split
                res = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                                 cache=cache, use_cache=True)
                logits = res.logits[torch.arange(B, device=dev), last]
            for step in range(sampling.max_new_tokens):
                tokens = self._sample(logits.float(), [s.generator for s, _ in requests], sampling)
                for r in range(B):
                    if finished[r]:
                        continue
                    generated[r].append(tokens[r])
                    if tokens[r] in self.stop_ids:
                        finished[r], reasons[r] = True, "stop"
                if all(finished) or step + 1 == sampling.max_new_tokens:
                    break
                # rows that just finished (or had finished) feed a masked pad
                alive = torch.tensor([0 if finished[r] else 1 for r in range(B)], device=dev)
                feed = torch.tensor(
                    [self.pad_id if finished[r] else tokens[r] for r in range(B)], device=dev
                ).unsqueeze(1)
                mask = torch.cat([mask, alive.unsqueeze(1)], dim=1)
                res = self.model(
                    input_ids=feed, attention_mask=mask, position_ids=next_pos.unsqueeze(1),
                    cache=cache, use_cache=True, logits_to_keep=1,
                )  # `cache` (a DynamicCache) is extended in place
                logits = res.logits[:, -1]
                next_pos = next_pos + alive

        # cut each row's cache back out (only unmasked slots, in order)
        layers = [(layer.keys, layer.values) for layer in cache.layers]  # views of the used slots
        results = []
        for r, (session, target) in enumerate(requests):
            idx = mask[r].nonzero().squeeze(1)
            session.cache = [(k[r : r + 1, :, idx].clone(), v[r : r + 1, :, idx].clone()) for k, v in layers]
            session.cache_ids = list(target) + generated[r][:-1]
            assert idx.numel() == len(session.cache_ids), (idx.numel(), len(session.cache_ids))
            session.prompt_tokens += len(target)
            session.prefill_tokens += len(new[r])
            session.completion_tokens += len(generated[r])
            body = [t for t in generated[r] if t not in self.stop_ids]
            results.append(Generation(
                text=self.tokenizer.decode(body, skip_special_tokens=True),
                token_ids=generated[r], finish_reason=reasons[r],
                prompt_tokens=len(target), prefill_tokens=len(new[r]),
            ))
        return results

    @staticmethod
    def _sample(logits: Any, generators: list[Any], sampling: SamplingConfig) -> list[int]:
        """One token per row: greedy at temperature 0, else a draw from the temperature-scaled
        distribution cut to its top-p nucleus (the smallest set of most likely tokens whose mass
        reaches top_p), with each row's own generator."""
        import torch

        if sampling.temperature == 0:
            return logits.argmax(dim=-1).tolist()
        probs = torch.softmax(logits / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            probs = nucleus(probs, sampling.top_p)
        # multinomial races exponential noise over the whole vocabulary (~2 ms per row per step on this
        # CPU). Tried at stop 29: an inverse-CDF draw with one uniform per row was 4x cheaper but flips
        # tokens under batched-matmul noise (every earlier token's error moves the running sum), so a
        # sample depended on its batch-mates (test_rollout.py::test_sampling_is_seeded_per_session)
        return [int(torch.multinomial(probs[r], 1, generator=gen).item()) for r, gen in enumerate(generators)]

    def plain_generate(self, messages: Sequence[dict[str, str]], max_new_tokens: int) -> list[int]:
        """Reference: greedy `model.generate` on the full history, no cache reuse (tests, benchmark)."""
        import torch

        ids = torch.tensor([self.prompt_ids(messages)], device=self.device)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                do_sample=False, eos_token_id=sorted(self.stop_ids), pad_token_id=self.pad_id,
            )
        return out[0, ids.shape[1] :].tolist()


__all__ = ["ENGINE_NAME", "HFEngine", "nucleus"]
