"""The flags and routes taken from `vllm serve`, through one real server (one engine start): HTTPS with a
certificate made here, vLLM's load/unload adapter routes driven by httpx and served through the official
`openai` client, the on-request resolver, and KV-cache events read off vLLM's ZMQ publisher with msgspec,
as a prefix-aware router (llm-d's) reads them."""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.fixtures.adapters import write_random_adapter
from tests.service.conftest import API_KEY, BASE
from tests.service.self_signed import write_self_signed
from tsumugi.launcher import HOST, ServerProcess, service_process

pytestmark = pytest.mark.engine  # the real vLLM engine, in a server process

ADMIN_KEY = "admin-key-compat"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
BLOCK_SIZE = 32
TOPIC = "kv-events"


class HttpsServerProcess(ServerProcess):
    """The launcher's server process, reached over HTTPS (readiness included)."""

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}"


@dataclass(frozen=True)
class CompatServer:
    url: str
    cert: Path
    root: Path  # --adapter-dir
    kv_events_port: int


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def compat(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """HTTPS, an admin key, adapters from `root` on request, KV events on a free port, 32-token blocks."""
    cert, key = write_self_signed(tmp_path_factory.mktemp("tls"))
    root = tmp_path_factory.mktemp("compat-adapters")
    write_random_adapter(tiny_model, root / "loaded", seed=11)
    write_random_adapter(tiny_model, root / "resolved", seed=12)
    events_port = free_tcp_port()
    events = f'{{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:{events_port}", ' \
             f'"topic": "{TOPIC}"}}'  # fmt: skip
    args = [
        "--model", str(tiny_model), "--served-model-name", BASE, "--max-model-len", "512", "--max-lora-rank", "8",
        "--adapter-dir", str(root), "--resolve-adapters-on-request", "--admin-api-key", ADMIN_KEY,
        "--api-key", API_KEY, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--enable-lora",
        "--kv-events-config", events, "--block-size", str(BLOCK_SIZE), "--enforce-eager",
    ]  # fmt: skip
    plain = service_process(args, tmp_path_factory.mktemp("logs") / "compat.log")
    proc = HttpsServerProcess(plain.argv, plain.log_path, port=plain.port, env=plain.env, name="service")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSL_CERT_FILE", str(cert))  # the launcher's readiness probe trusts the test certificate
        proc.start()
    try:
        yield CompatServer(proc.url, cert, root, events_port)
    finally:
        proc.stop_in_background()


def openai_client(server: CompatServer) -> openai.OpenAI:
    http = httpx.Client(verify=ssl.create_default_context(cafile=str(server.cert)), timeout=120)
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, http_client=http)


def post_admin(server: CompatServer, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v1{path}", json=body, headers=ADMIN, verify=str(server.cert), timeout=120)


def test_https_is_served_and_verified_with_the_given_certificate(compat):
    with openai_client(compat) as client:
        assert next(m.id for m in client.models.list().data) == BASE
    with pytest.raises(httpx.ConnectError):  # an untrusted certificate is refused by a verifying client
        httpx.get(f"{compat.url}/health", timeout=10)
    with pytest.raises(httpx.RemoteProtocolError):  # no plain HTTP on the port
        httpx.get(f"http://{HOST}:{compat.url.rsplit(':', 1)[1]}/health", timeout=10)


def test_vllm_load_request_unload_then_404(compat):
    loaded = post_admin(
        compat, "/load_lora_adapter", {"lora_name": "vllm-api", "lora_path": str(compat.root / "loaded")}
    )
    assert (loaded.status_code, loaded.text) == (200, "Success: LoRA adapter 'vllm-api' added successfully.")
    with openai_client(compat) as client:
        answer = client.completions.create(model="vllm-api", prompt="Hello there", max_tokens=4, temperature=0)
        assert answer.model == "vllm-api" and answer.usage.completion_tokens == 4
        twice = post_admin(compat, "/load_lora_adapter", {"lora_name": "vllm-api", "lora_path": "loaded"})
        assert twice.status_code == 400 and twice.json()["error"]["param"] == "lora_name"
        unloaded = post_admin(compat, "/unload_lora_adapter", {"lora_name": "vllm-api"})
        assert (unloaded.status_code, unloaded.text) == (200, "Success: LoRA adapter 'vllm-api' removed successfully.")
        with pytest.raises(openai.NotFoundError) as gone:
            client.completions.create(model="vllm-api", prompt="Hello there", max_tokens=4)
    assert gone.value.body["code"] == "model_not_found"
    assert post_admin(compat, "/unload_lora_adapter", {"lora_name": "vllm-api"}).status_code == 404


def test_a_request_naming_an_adapter_directory_loads_it(compat):
    with openai_client(compat) as client:
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nowhere", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        answer = client.chat.completions.create(
            model="resolved", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
        )
        listed = [m.id for m in client.models.list().data]
    assert answer.model == "resolved" and "resolved" in listed


def test_kv_events_reach_a_subscriber_with_the_prompts_tokens(compat, tiny_model):
    """A BlockStored event carries the token ids of each full block of the prompt, as vLLM publishes them."""
    import msgspec
    import zmq
    from transformers import AutoTokenizer
    from vllm.distributed.kv_events import BlockStored, KVEventBatch

    messages = [{"role": "user", "content": " ".join(f"token{i}" for i in range(60))}]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)  # as service/pipeline/prompts.py renders it
    full_blocks = prompt_ids[: len(prompt_ids) // BLOCK_SIZE * BLOCK_SIZE]
    assert len(full_blocks) >= BLOCK_SIZE
    context = zmq.Context()
    subscriber = context.socket(zmq.SUB)
    try:
        subscriber.connect(f"tcp://{HOST}:{compat.kv_events_port}")
        subscriber.setsockopt_string(zmq.SUBSCRIBE, TOPIC)
        time.sleep(1.0)  # a SUB socket receives only what is published after it has joined
        with openai_client(compat) as client:
            answer = client.chat.completions.create(model=BASE, messages=messages, max_tokens=2, temperature=0)
        assert answer.usage.prompt_tokens == len(prompt_ids)
        decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
        stored: list[int] = []
        lora_names: set[str | None] = set()
        deadline = time.monotonic() + 30
        while len(stored) < len(full_blocks) and time.monotonic() < deadline:
            if subscriber.poll(timeout=1000):
                topic, _sequence, payload = subscriber.recv_multipart()
                assert topic == TOPIC.encode()
                events = decoder.decode(payload).events
                blocks = [event for event in events if isinstance(event, BlockStored)]
                stored += [token for event in blocks for token in event.token_ids]
                lora_names |= {event.lora_name for event in blocks}
    finally:
        subscriber.close(linger=0)
        context.term()
    assert stored[: len(full_blocks)] == full_blocks
    # On CPU a base-model request runs on the null adapter (engine/null_adapter.py), and vLLM names it in the event.
    assert lora_names == {"tsumugi-null-adapter"}
