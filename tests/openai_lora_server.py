"""A test stand-in for vLLM's OpenAI-compatible server. It is NOT vLLM.

vLLM cannot be installed on the test machines (it needs a GPU and pins its own torch), so the tests
of `eef_tasks.engines.vllm` run against this small FastAPI server instead. It implements the subset
of vLLM's API that the engine uses, with vLLM's shapes and status codes, on a real transformers
model with real peft LoRA adapters:

- `GET  /v1/models`             the base model (served name) and the loaded adapters (`parent` = base)
- `POST /v1/chat/completions`   `model` = the base or a loaded adapter; unknown model -> 404
                                 ({"error": {"message", "type": "NotFoundError", "code": 404}})
- `POST /v1/load_lora_adapter`  {"lora_name", "lora_path"}: reads the weights now (as vLLM does);
                                 a name already loaded -> 400 "... has already been loaded ..."
- `POST /v1/unload_lora_adapter` {"lora_name"}; unknown -> 404
- `GET  /health`
- `--api-key K` (default $VLLM_API_KEY): every /v1 route wants `Authorization: Bearer K` (401 otherwise), as vLLM's.

Replies are greedy `model.generate` at temperature 0 (otherwise sampled, seeded with the request's
`seed`), stopping at the chat template's end-of-turn token, one request at a time. Each adapter is
merged into its own copy of the base model, so a reply through an adapter is what the model with
the merged adapter generates.

Test hooks (not part of vLLM's API): `POST /_test/faults` queues scripted answers
([{"status", "body", "headers"}]) for the next chat completions; `GET /_test/requests` returns the
chat completion bodies received so far; `POST /_test/hold` makes every chat completion wait (once
received) until `POST /_test/release` (a replica that is slow, or hangs until it is killed).

    python tests/openai_lora_server.py --model PATH --served-model-name NAME --port 8000 [--api-key K]
"""

from __future__ import annotations

import argparse
import copy
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse


def _error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": status}}, status_code=status
    )


def create_app(model_path: str, served_name: str, api_key: str | None = None) -> FastAPI:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    stop = {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id}
    gen_eos = base.generation_config.eos_token_id
    stop |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    stop_ids = sorted(i for i in stop if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]

    models: dict[str, Any] = {served_name: base}
    lora_paths: dict[str, str] = {}
    lock = threading.Lock()
    faults: list[dict[str, Any]] = []
    received: list[dict[str, Any]] = []
    released = threading.Event()  # cleared by /_test/hold: chat completions wait for /_test/release
    released.set()
    app = FastAPI(title="openai-lora stand-in (not vLLM)")

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1"):
            if request.headers.get("authorization") != f"Bearer {api_key}":
                return JSONResponse({"error": "Unauthorized"}, status_code=401)
        return await call_next(request)

    @app.get("/health")
    def health() -> PlainTextResponse:
        return PlainTextResponse("")

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        cards = [{"id": served_name, "object": "model", "owned_by": "vllm", "root": model_path, "parent": None}]
        cards += [{"id": name, "object": "model", "owned_by": "vllm", "root": path, "parent": served_name}
                  for name, path in lora_paths.items()]
        return {"object": "list", "data": cards}

    @app.post("/v1/load_lora_adapter")
    def load_lora_adapter(body: dict[str, Any]):
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return _error(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        if name in lora_paths:
            return _error(400, f"The lora adapter '{name}' has already been loaded. If you want to load "
                               "the adapter in place, set 'load_inplace' to True.", "InvalidUserInput")
        if not (Path(path) / "adapter_config.json").is_file():
            return _error(404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError")
        from peft import PeftModel

        with lock:
            merged = PeftModel.from_pretrained(copy.deepcopy(base), path).merge_and_unload().eval()
            models[name] = merged
            lora_paths[name] = path
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    def unload_lora_adapter(body: dict[str, Any]):
        name = body.get("lora_name")
        if not name:
            return _error(400, "'lora_name' needs to be provided to unload a LoRA adapter.", "InvalidUserInput")
        if name not in lora_paths:
            return _error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        with lock:
            del models[name], lora_paths[name]
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    @app.post("/v1/chat/completions")
    def chat_completions(body: dict[str, Any]):
        received.append(body)
        if not released.wait(timeout=300):
            return _error(503, "held by /_test/hold for too long", "ServiceUnavailableError")
        if faults:
            fault = faults.pop(0)
            return JSONResponse(fault.get("body", {}), status_code=fault.get("status", 500),
                                headers=fault.get("headers") or {})
        name = body.get("model") or served_name
        model = models.get(name)
        if model is None:
            return _error(404, f"The model `{name}` does not exist.", "NotFoundError", "model")
        text = tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        temperature = float(body.get("temperature", 1.0))
        kwargs: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            kwargs = {"do_sample": True, "temperature": temperature, "top_p": float(body.get("top_p", 1.0)),
                      "top_k": 0}
        with lock, torch.inference_mode():
            if body.get("seed") is not None:
                torch.manual_seed(int(body["seed"]))
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=int(body.get("max_tokens", 16)),
                eos_token_id=stop_ids, pad_token_id=pad_id, **kwargs,
            )
        generated = out[0, ids.shape[1]:].tolist()
        finish = "stop" if generated and generated[-1] in stop_ids else "length"
        reply = tokenizer.decode([t for t in generated if t not in stop_ids], skip_special_tokens=True)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                         "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": ids.shape[1], "completion_tokens": len(generated),
                      "total_tokens": ids.shape[1] + len(generated)},
        }

    @app.post("/_test/faults")
    def add_faults(body: list[dict[str, Any]]) -> dict[str, int]:
        faults.extend(body)
        return {"queued": len(faults)}

    @app.post("/_test/hold")
    def hold() -> dict[str, bool]:
        released.clear()
        return {"held": True}

    @app.post("/_test/release")
    def release() -> dict[str, bool]:
        released.set()
        return {"held": False}

    @app.get("/_test/requests")
    def requests_received() -> list[dict[str, Any]]:
        return received

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY"),
                        help="default $VLLM_API_KEY (as vLLM)")
    args = parser.parse_args()
    import uvicorn

    uvicorn.run(create_app(args.model, args.served_model_name, args.api_key),
                host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
