"""Policy rollouts with a local transformers model: exploration, simulations and evaluation.

Two parts:

- `HFEngine`: batched sampling for many concurrent conversations with **per-conversation KV-cache
  reuse**. Each conversation (`Session`) keeps the token ids whose keys/values are cached and the
  cache itself (one `(key, value)` pair per layer, shape `[1, heads, length, dim]`). On every turn
  the *whole* conversation is rendered with `eef_tasks.chat.build_chat` messages and the
  tokenizer's chat template (so the prompt is exactly what training sees); the longest common
  prefix with the cached ids is kept (the cache is cropped there) and only the rest — in practice
  the new observation and the assistant header, plus the previous reply's end-of-turn token — is
  fed to the model. A reply that was re-formatted before going into the chat (e.g. by
  `parse_action`) simply shares a shorter prefix: correctness never depends on the cache.

  Batching caches of different lengths: for one `generate` call the rows' caches are **left-padded**
  to the longest cached length, the rows' new tokens are **right-padded** after it, and padded slots
  are masked out (2-D attention mask with holes) while `position_ids` continue each row's own
  positions. No query ever sees only masked keys (so no NaNs from fully masked rows); the first
  sampled token of each row is read from the hidden state of its own last new token. The decode
  loop then feeds one token per row (finished rows feed a masked pad) until every row produced the
  end-of-turn token or `max_new_tokens`. Afterwards each row's cache is cut back out of the batch
  (only unmasked slots), so the next call may batch any other set of conversations. Sampling uses
  one `torch.Generator` per conversation, so a sample does not depend on its batch-mates (up to
  floating-point differences of batched matmuls).

- `run_rollouts`: the episode driver. Episodes are from `s0` ('explore' / 'eval') or simulations
  from `s_k` of an expert trajectory ('simulate': the expert's first `k` actions are replayed with
  the environment's own observations, drift recorded in `meta.drift`). Environments run in
  `EnvPool`s, one single-worker pool per concurrent episode slot, each driven from its own thread;
  the threads' policy calls meet in the calling thread, which batches them through the engine.
  Trajectories are stored per CONTRACT.md with deterministic ids
  (`traj_id_for_rollout`) and resumably (stored ids are skipped).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eef_tasks.chat import build_chat
from eef_tasks.envs.base import EnvError, parse_task_id
from eef_tasks.envs.pool import EnvPool, Episode, EpisodeResult, EpisodeView
from eef_tasks.experts.llm import INVALID_REPLY_MESSAGE, parse_action
from eef_tasks.records import StepRecord, TaskRecord, TrajectoryRecord

logger = logging.getLogger(__name__)

ENGINE_NAME = "hf"
PURPOSES = ("explore", "simulate", "eval")


# --- sampling -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingConfig:
    """How replies are sampled; stored in every trajectory's `meta.sampling`.

    `temperature == 0` is greedy decoding. `seed` is the run's base seed: each episode's generator
    is seeded with `seed` and a hash of its traj_id, so reruns of an episode give the same sample.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")


def episode_seed(seed: int, key: str) -> int:
    """A per-episode seed, stable across processes (no Python hash randomisation)."""
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63 - 1)


# --- the engine -----------------------------------------------------------------------------------


@dataclass
class Session:
    """One conversation's cached state: the ids whose KV is in `cache`, and the cache."""

    key: str
    seed: int = 0
    cache_ids: list[int] = field(default_factory=list)
    cache: list[tuple[Any, Any]] | None = None  # per layer (key, value), [1, H, len, D]
    generator: Any = None
    prompt_tokens: int = 0  # prompt tokens over all calls (what a stateless server would read)
    prefill_tokens: int = 0  # prompt tokens actually computed (the rest came from the cache)
    completion_tokens: int = 0

    def reset(self) -> None:
        self.cache_ids, self.cache = [], None


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str  # 'stop' (end-of-turn token) or 'length'
    prompt_tokens: int
    prefill_tokens: int


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class HFEngine:
    """A transformers causal LM (optionally with a LoRA adapter) sampling many chats at once."""

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
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from eef_tasks.models import resolve_model

        self.model_path = resolve_model(str(model_path) if model_path is not None else None)
        self.adapter_dir = str(adapter_dir) if adapter_dir else None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype)
        if self.adapter_dir:
            try:
                from peft import PeftModel
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise EnvError("a LoRA adapter needs the `peft` package: pip install 'peft==0.21.*'") from exc
            model = PeftModel.from_pretrained(model, self.adapter_dir)
            if merge_adapter:
                model = model.merge_and_unload()
        self.model = model.to(self.device).eval()
        self.max_batch_size = max_batch_size
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

        # batch cache: row r's cached slots right-aligned in [0, max_l)
        cache = DynamicCache()
        if max_l > 0:
            ref = next(s.cache for (s, _), n in zip(requests, keep, strict=True) if n > 0)
            layers = []
            for li, (k0, v0) in enumerate(ref):
                shape_k = (B, k0.shape[1], max_l, k0.shape[3])
                shape_v = (B, v0.shape[1], max_l, v0.shape[3])
                k = torch.zeros(shape_k, dtype=k0.dtype, device=dev)
                v = torch.zeros(shape_v, dtype=v0.dtype, device=dev)
                for r, ((session, _), n) in enumerate(zip(requests, keep, strict=True)):
                    if n > 0:
                        sk, sv = session.cache[li]
                        k[r, :, max_l - n :] = sk[0, :, :n]
                        v[r, :, max_l - n :] = sv[0, :, :n]
                layers.append((k, v))
            cache = DynamicCache(ddp_cache_data=layers)

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
        layers = [(layer.keys, layer.values) for layer in cache.layers]
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
        import torch

        if sampling.temperature == 0:
            return logits.argmax(dim=-1).tolist()
        probs = torch.softmax(logits / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            cum = sorted_p.cumsum(dim=-1)
            drop = cum - sorted_p > sampling.top_p  # keep the smallest set reaching top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        out = []
        for r, gen in enumerate(generators):
            out.append(int(torch.multinomial(probs[r].cpu(), 1, generator=gen).item()))
        return out

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


# --- episodes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutEpisode:
    """One episode to run: from s0 (`branch_traj_id=None`, `branch_step=0`) or a simulation from
    state `s_k` of expert trajectory `branch_traj_id` (`k = branch_step`). `sample` tells repeated
    episodes of the same start apart (RFT×k)."""

    task_id: str
    branch_traj_id: str | None = None
    branch_step: int = 0
    sample: int = 0

    def __post_init__(self) -> None:
        if (self.branch_traj_id is None) != (self.branch_step == 0):
            raise ValueError("branch_traj_id and branch_step > 0 go together")


def traj_id_for_rollout(run_id: str, iteration: int, purpose: str, episode: RolloutEpisode) -> str:
    """'<run>/it<i>/<purpose>/<task_id>/<branch_traj_id or s0>@<k>/<sample>'."""
    start = episode.branch_traj_id or "s0"
    return f"{run_id}/it{iteration}/{purpose}/{episode.task_id}/{start}@{episode.branch_step}/{episode.sample}"


def explore_episodes(task_ids: Iterable[str], n_samples: int = 1) -> list[RolloutEpisode]:
    """Episodes from the initial state of each task, `n_samples` each."""
    return [RolloutEpisode(t, sample=s) for t in task_ids for s in range(n_samples)]


def simulation_episodes(
    db: str | Path, run_id: str, n_sims: int | None = None, *, n_samples: int = 1
) -> list[RolloutEpisode]:
    """The simulation starts of a run: the `expert_checkpoints` view's rows for `run_id` (the
    run's own M), or, with `n_sims`, the same rule (l = max(1, T // (M+1)), checkpoints m*l < T)
    over the failed expert trajectories of training tasks. Read-only."""
    from eef_tasks.store import reader

    with reader(db) as con:
        if n_sims is None:
            rows = con.execute(
                "SELECT task_id, expert_traj_id, step FROM expert_checkpoints WHERE run_id = ? "
                "ORDER BY task_id, expert_traj_id, step", [run_id],
            ).fetchall()
        else:
            rows = con.execute(
                """WITH f AS (
                       SELECT t.traj_id, t.task_id, t.n_steps, greatest(1, t.n_steps // ($m + 1)) AS l
                       FROM trajectories AS t JOIN tasks AS k ON k.task_id = t.task_id
                       WHERE t.source = 'expert' AND NOT t.success AND k.split = 'train'),
                   c AS (SELECT *, unnest(generate_series(1, $m)) AS m FROM f)
                   SELECT task_id, traj_id, m * l FROM c WHERE m * l < n_steps
                   ORDER BY task_id, traj_id, m * l""",
                {"m": int(n_sims)},
            ).fetchall() if n_sims > 0 else []
    return [RolloutEpisode(t, e, int(k), s) for t, e, k in rows for s in range(n_samples)]


@dataclass
class RolloutSummary:
    run_id: str
    iteration: int
    purpose: str
    requested: int = 0
    already_stored: int = 0
    ran: int = 0
    written: int = 0
    skipped_on_write: int = 0
    successes: int = 0
    failures: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    batches: int = 0
    generate_calls: int = 0
    mean_batch_size: float = 0.0
    prompt_tokens: int = 0
    prefill_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    generate_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _State:
    """The driver's side of one running episode (what the environment does not keep)."""

    traj_id: str
    episode: RolloutEpisode
    env: str
    session: Session
    prefix_thoughts: list[str | None]
    max_steps: int | None
    thoughts: list[str | None] = field(default_factory=list)
    pending: list[dict[str, str]] = field(default_factory=list)
    invalid_replies: list[dict[str, Any]] = field(default_factory=list)
    invalid_in_a_row: int = 0
    calls: int = 0
    stop_reason: str | None = None
    restarts: int = 0


class _Batcher:
    """Collects policy calls from the environment threads; the calling thread answers them in
    batches (`serve`)."""

    def __init__(self) -> None:
        self.requests: queue.Queue[tuple[_State, list[dict[str, str]], Future]] = queue.Queue()
        self.lock = threading.Lock()
        self.active = 0  # threads currently running an episode
        self.closed = False

    def ask(self, state: _State, messages: list[dict[str, str]]) -> Generation:
        if self.closed:
            raise RuntimeError("the rollout driver stopped")
        future: Future = Future()
        self.requests.put((state, messages, future))
        return future.result()

    def close(self) -> None:
        """No more answers: fail what is waiting, so that no environment thread hangs."""
        self.closed = True
        while True:
            try:
                _, _, future = self.requests.get_nowait()
            except queue.Empty:
                return
            if not future.done():
                future.set_exception(RuntimeError("the rollout driver stopped"))


def _load_prefixes(db: str | Path, traj_ids: set[str]) -> dict[str, list[tuple[str | None, str, str]]]:
    from eef_tasks.store import reader

    if not traj_ids:
        return {}
    out: dict[str, list[tuple[str | None, str, str]]] = {t: [] for t in traj_ids}
    with reader(db) as con:
        rows = con.execute(
            "SELECT traj_id, thought, action, observation FROM steps WHERE traj_id IN "
            "(SELECT unnest($ids)) ORDER BY traj_id, step", {"ids": sorted(traj_ids)},
        ).fetchall()
    for traj_id, thought, action, observation in rows:
        out[traj_id].append((thought, action, observation))
    return out


def _stored_ids(db: str | Path, run_id: str) -> set[str]:
    from eef_tasks.store import reader

    if not Path(db).exists():
        return set()
    with reader(db) as con:
        return {r[0] for r in con.execute(
            "SELECT traj_id FROM trajectories WHERE run_id = ?", [run_id]).fetchall()}


def _task_info(db: str | Path, task_ids: set[str]) -> dict[str, tuple[int | None, TaskRecord | None]]:
    """max_steps and (for tasks missing from the store) a task row, per task."""
    from eef_tasks.store import reader

    stored: dict[str, int | None] = {}
    if Path(db).exists():
        with reader(db) as con:
            stored = dict(con.execute(
                "SELECT task_id, max_steps FROM tasks WHERE task_id IN (SELECT unnest($ids))",
                {"ids": sorted(task_ids)},
            ).fetchall())
    out: dict[str, tuple[int | None, TaskRecord | None]] = {}
    for task_id in task_ids:
        env, _, _ = parse_task_id(task_id)
        spec = None
        if env == "scienceworld":
            from eef_tasks.envs.scienceworld import find_task

            try:
                spec = find_task(task_id)
            except EnvError:
                spec = None
        limit = stored.get(task_id) if task_id in stored else None
        if limit is None and spec is not None:
            limit = spec.max_steps
        row = None
        if task_id not in stored and spec is not None and spec.instruction is not None:
            from eef_tasks.experts import task_record

            row = task_record(spec)
        out[task_id] = (limit, row)
    return out


def run_rollouts(
    db: str | Path,
    run_id: str,
    iteration: int,
    episodes: Sequence[RolloutEpisode],
    *,
    purpose: str = "explore",
    model_path: str | Path | None = None,
    adapter_dir: str | Path | None = None,
    model_id: str | None = None,
    engine: Any = None,  # HFEngine, VLLMEngine or anything with session/generate/model_path/adapter_dir
    sampling: SamplingConfig | None = None,
    n_workers: int = 1,
    pools: Sequence[EnvPool] | None = None,
    env: str = "scienceworld",
    env_kwargs: dict[str, Any] | None = None,
    max_steps: int | None = None,
    max_invalid_in_a_row: int = 3,
    batch_size: int = 50,
    batch_wait_s: float = 0.05,
    retries: int = 2,
    timeout_s: float = 600.0,
    on_progress: Any = None,
    engine_factory: Any = None,
) -> RolloutSummary:
    """Run the policy on `episodes` and store every finished trajectory.

    `purpose`: 'explore' or 'eval' (episodes must start from s0), 'simulate' (episodes must have
    branch_step > 0: the expert trajectory's first k actions are replayed, with the observations
    the environment returns now). Concurrency: one environment slot per `EnvPool` in `pools`, or
    `n_workers` single-worker pools created here; all slots' model calls are batched together.
    `on_progress(summary)` is called once the stored episodes are counted and after each finished
    episode (progress bars, Prefect). Without `engine`, `engine_factory()` (default: an `HFEngine` of
    `model_path` + `adapter_dir`) makes one, only when some episode is left to run.
    `max_steps` caps the task's own step limit (model calls, invalid ones included, count against
    it, as for the LLM expert). Resumable: traj_ids already stored for `run_id` are skipped.
    """
    from eef_tasks.store import writer

    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}")
    for ep in episodes:
        if (purpose == "simulate") != (ep.branch_step > 0):
            raise ValueError(f"{ep}: purpose 'simulate' needs branch_step > 0, the others start from s0")
    sampling = sampling or SamplingConfig()
    started = time.monotonic()
    summary = RolloutSummary(run_id=run_id, iteration=iteration, purpose=purpose)
    stored = _stored_ids(db, run_id)
    todo: list[tuple[str, RolloutEpisode]] = []
    seen: set[str] = set()
    for ep in episodes:
        traj_id = traj_id_for_rollout(run_id, iteration, purpose, ep)
        if traj_id in seen:
            continue
        seen.add(traj_id)
        summary.requested += 1
        if traj_id in stored:
            summary.already_stored += 1
        else:
            todo.append((traj_id, ep))
    if on_progress is not None:
        on_progress(summary)
    if not todo:
        summary.elapsed_s = time.monotonic() - started
        return summary

    prefixes = _load_prefixes(db, {ep.branch_traj_id for _, ep in todo if ep.branch_traj_id})
    tasks = _task_info(db, {ep.task_id for _, ep in todo})
    engine = engine or (engine_factory() if engine_factory else HFEngine(model_path, adapter_dir))
    model_id = model_id or (Path(engine.adapter_dir).name if engine.adapter_dir else Path(engine.model_path).name)

    states: dict[str, _State] = {}
    jobs: list[tuple[_State, Episode]] = []
    for traj_id, ep in todo:
        prefix = prefixes.get(ep.branch_traj_id, []) if ep.branch_traj_id else []
        if ep.branch_traj_id and len(prefix) < ep.branch_step:
            summary.errors.append((traj_id, f"{ep.branch_traj_id} has {len(prefix)} steps, fewer than {ep.branch_step}"))
            continue
        prefix = prefix[: ep.branch_step]
        limit = min(x for x in (tasks[ep.task_id][0], max_steps) if x is not None) \
            if (tasks[ep.task_id][0] or max_steps) else None
        if limit is not None and limit <= ep.branch_step:
            limit = ep.branch_step + 1  # a simulation always gets at least one policy step
        env_name = parse_task_id(ep.task_id)[0]
        state = _State(
            traj_id=traj_id, episode=ep, env=env_name,
            session=engine.session(traj_id, episode_seed(sampling.seed, traj_id)),
            prefix_thoughts=[t for t, _, _ in prefix], max_steps=limit,
        )
        states[traj_id] = state
        jobs.append((state, Episode(
            ep.task_id, actions=[a for _, a, _ in prefix],
            recorded_observations=[o for _, _, o in prefix] if prefix else None,
            max_steps=limit, key=traj_id,
        )))

    batcher = _Batcher()

    def policy(view: EpisodeView) -> str | None:
        state = states[view.key]
        n_prefix = view.n_prefix
        if len(view.actions) < n_prefix + len(state.thoughts) or (
            len(view.actions) == n_prefix and (state.thoughts or state.calls)
        ):  # the pool reran the episode from scratch
            state.restarts += 1
            state.thoughts, state.pending, state.invalid_replies = [], [], []
            state.invalid_in_a_row, state.calls, state.stop_reason = 0, 0, None
            state.session.reset()
        while True:
            if state.max_steps is not None and n_prefix + state.calls >= state.max_steps:
                state.stop_reason = "max_steps"
                return None
            thoughts = state.prefix_thoughts[:n_prefix] + state.thoughts
            steps = [
                {"thought": t, "action": a, "observation": o}
                for t, a, o in zip(thoughts, view.actions, view.observations, strict=True)
            ]
            turns = build_chat(state.env, view.instruction, steps, include_last_observation=True)
            messages = [t.message() for t in turns] + state.pending
            reply = batcher.ask(state, messages)
            state.calls += 1
            thought, action = parse_action(reply.text)
            if action is not None:
                state.thoughts.append(thought)
                state.pending, state.invalid_in_a_row = [], 0
                return action
            state.invalid_replies.append({"after_step": len(view.actions), "reply": reply.text[:300]})
            state.invalid_in_a_row += 1
            state.pending = [
                {"role": "assistant", "content": reply.text.strip() or "(empty reply)"},
                {"role": "user", "content": INVALID_REPLY_MESSAGE},
            ]
            if state.invalid_in_a_row >= max_invalid_in_a_row:
                state.stop_reason = "invalid_replies"
                return None

    work: queue.Queue[tuple[_State, Episode] | None] = queue.Queue()
    for job in jobs:
        work.put(job)
    results: queue.Queue[tuple[_State, EpisodeResult]] = queue.Queue()
    own_pools = pools is None
    kwargs = dict(env_kwargs or {})
    n_slots = min(len(pools) if pools else n_workers, max(1, len(jobs)))
    slot_pools: list[EnvPool] = list(pools[:n_slots]) if pools else []
    failures: list[BaseException] = []

    def slot(index: int) -> None:
        try:
            pool = slot_pools[index] if not own_pools else EnvPool(
                1, env, retries=retries, timeout_s=timeout_s, **kwargs)
            if own_pools:
                slot_pools.append(pool)
            while True:
                try:
                    job = work.get_nowait()
                except queue.Empty:
                    return
                state, episode = job
                episode.policy = policy
                with batcher.lock:
                    batcher.active += 1
                try:
                    (result,) = pool.run([episode])
                finally:
                    with batcher.lock:
                        batcher.active -= 1
                results.put((state, result))
        except BaseException as exc:  # noqa: BLE001 - reported by the calling thread
            failures.append(exc)

    threads = [threading.Thread(target=slot, args=(i,), daemon=True, name=f"eef-rollout-{i}")
               for i in range(n_slots)]
    for t in threads:
        t.start()
    buffer: list[TrajectoryRecord] = []
    task_rows = [row for _, row in tasks.values() if row is not None]
    n_batches = 0

    def flush() -> None:
        if not buffer:
            return
        with writer(db) as con:
            from eef_tasks.records import write_trajectories

            res = write_trajectories(con, list(buffer), task_rows)
        summary.batches += 1
        summary.written += res.trajectories_added
        summary.skipped_on_write += res.trajectories_skipped
        buffer.clear()

    try:
        while any(t.is_alive() for t in threads) or not results.empty() or not batcher.requests.empty():
            # gather policy calls; go once every running episode is waiting (or after a short wait)
            pending: list[tuple[_State, list[dict[str, str]], Future]] = []
            deadline = None
            while True:
                try:
                    pending.append(batcher.requests.get(timeout=0.01))
                    deadline = deadline or time.monotonic() + batch_wait_s
                except queue.Empty:
                    pass
                with batcher.lock:
                    active = batcher.active
                if pending and (len(pending) >= active or time.monotonic() >= deadline):
                    break
                if not pending and (not results.empty() or not any(t.is_alive() for t in threads)):
                    break
            if pending:
                t0 = time.monotonic()
                try:
                    gens = engine.generate([(s.session, m) for s, m, _ in pending], sampling)
                except BaseException as exc:
                    for _, _, fut in pending:
                        fut.set_exception(exc)
                    raise
                summary.generate_s += time.monotonic() - t0
                summary.generate_calls += 1
                n_batches += len(pending)
                for (_, _, fut), gen in zip(pending, gens, strict=True):
                    fut.set_result(gen)
            while not results.empty():
                state, result = results.get()
                record = _record(state, result, run_id, iteration, purpose, model_id, engine, sampling, summary)
                if record is not None:
                    buffer.append(record)
                if len(buffer) >= batch_size:
                    flush()
                if on_progress is not None:
                    on_progress(summary)
        if failures:
            raise failures[0]
    finally:
        batcher.close()
        while not work.empty():  # slots take no new episodes
            try:
                work.get_nowait()
            except queue.Empty:
                break
        try:
            flush()
        finally:
            if own_pools:
                for t in threads:
                    t.join(timeout=timeout_s)
                for pool in slot_pools:
                    pool.close()
            summary.mean_batch_size = n_batches / summary.generate_calls if summary.generate_calls else 0.0
            summary.elapsed_s = time.monotonic() - started
    return summary


def _record(
    state: _State, result: EpisodeResult, run_id: str, iteration: int, purpose: str,
    model_id: str, engine: Any, sampling: SamplingConfig, summary: RolloutSummary,
) -> TrajectoryRecord | None:
    session = state.session
    summary.prompt_tokens += session.prompt_tokens
    summary.prefill_tokens += session.prefill_tokens
    summary.completion_tokens += session.completion_tokens
    if result.error is not None:
        summary.errors.append((state.traj_id, result.error))
        logger.warning("rollout %s failed: %s", state.traj_id, result.error)
        return None
    ep = state.episode
    branch_step = min(ep.branch_step, result.n_prefix)
    if ep.branch_step and branch_step == 0:
        summary.errors.append((state.traj_id, "the expert prefix could not be replayed (episode ended)"))
        return None
    if result.done and not result.truncated:
        stop_reason = "done"
    elif result.truncated or (state.max_steps is not None and len(result.actions) >= state.max_steps):
        stop_reason = "max_steps"
    else:
        stop_reason = state.stop_reason or "stopped"
    thoughts = state.prefix_thoughts[: result.n_prefix] + state.thoughts
    meta: dict[str, Any] = {
        "engine": getattr(engine, "name", ENGINE_NAME),
        "model_path": engine.model_path,
        "adapter_dir": engine.adapter_dir,
        "sampling": {**asdict(sampling), "episode_seed": session.seed},
        "sample": ep.sample,
        "n_prefix": result.n_prefix,
        "drift": list(result.drift),
        "stop_reason": stop_reason,
        "max_steps": state.max_steps,
        "n_calls": state.calls,
        "n_invalid": len(state.invalid_replies),
        "invalid_replies": state.invalid_replies,
        "invalid_steps": list(result.invalid),
        "prompt_tokens": session.prompt_tokens,
        "prefill_tokens": session.prefill_tokens,
        "completion_tokens": session.completion_tokens,
        "initial_observation": result.initial_observation,
        "attempts": result.attempts,
    }
    if getattr(engine, "served_model", None):  # the model name a server answered with (vllm)
        meta["served_model"] = engine.served_model
    if result.n_prefix < ep.branch_step:
        meta["prefix_incomplete"] = {"requested": ep.branch_step, "replayed": result.n_prefix}
    record = TrajectoryRecord(
        traj_id=state.traj_id, task_id=result.task_id, run_id=run_id, source="policy",
        model_id=model_id, iteration=iteration, purpose=purpose,
        branch_traj_id=ep.branch_traj_id if branch_step else None, branch_step=branch_step,
        reward=max(0.0, min(1.0, result.reward)), meta=meta,
        steps=[
            StepRecord(thought=t, action=a, observation=o, reward=r)
            for t, a, o, r in zip(thoughts, result.actions, result.observations, result.rewards, strict=True)
        ],
    )
    summary.ran += 1
    summary.successes += bool(record.success)
    summary.failures += not record.success
    return record


__all__ = [
    "ENGINE_NAME", "Generation", "HFEngine", "RolloutEpisode", "RolloutSummary", "SamplingConfig",
    "Session", "episode_seed", "explore_episodes", "run_rollouts", "simulation_episodes",
    "traj_id_for_rollout",
]
