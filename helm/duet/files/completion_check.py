# The `helm test` check: one completion through the gateway (standard library only).
# Exit 0 only on HTTP 200 with a non-empty first choice; retries while the gateway is not
# reachable or not ready (503), until DUET_TEST_TIMEOUT_SECONDS.
import json
import os
import sys
import time
import urllib.error
import urllib.request

base = os.environ["DUET_GATEWAY_URL"].rstrip("/")
deadline = time.monotonic() + float(os.environ.get("DUET_TEST_TIMEOUT_SECONDS", "120"))
headers = {"Content-Type": "application/json"}
keys = os.environ.get("DUET_API_KEYS", "")
if keys:
    headers["Authorization"] = "Bearer " + keys.split(",")[0].strip()


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    while True:
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            if err.code != 503 or time.monotonic() > deadline:
                return err.code, err.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as err:
            if time.monotonic() > deadline:
                return 0, str(err)
        time.sleep(2)


status, models = call("GET", "/v1/models")
if status != 200 or not models.get("data"):
    sys.exit(f"FAIL GET /v1/models: HTTP {status}: {models}")
model = models["data"][0]["id"]
request = {
    "model": model,
    "prompt": os.environ.get("DUET_TEST_PROMPT", "Hello"),
    "max_tokens": int(os.environ.get("DUET_TEST_MAX_TOKENS", "8")),
    "temperature": 0,
    "ignore_eos": True,
}
status, body = call("POST", "/v1/completions", request)
if status != 200:
    sys.exit(f"FAIL POST /v1/completions: HTTP {status}: {body}")
choices = body.get("choices") or []
text = choices[0].get("text") if choices else None
if not isinstance(text, str) or not text:
    sys.exit(f"FAIL POST /v1/completions: no non-empty choice in {body}")
print(f"OK model={model} text={text!r} usage={body.get('usage')}")
