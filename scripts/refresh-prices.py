#!/usr/bin/env python3
"""Refreshes infermux's built-in price table from litellm's model price map.

litellm (MIT) ships `model_prices_and_context_window_backup.json` in its
PyPI package; this script downloads the package (no dependencies, nothing
installed), keeps the OpenAI and Anthropic chat, responses and embedding
models, converts the prices to USD per million tokens, and writes
crates/infermux/data/model_prices.json with the package version and the
date it was taken. Rebuild infermux afterwards: the table is compiled in.

Usage: scripts/refresh-prices.py [litellm version, default: the newest]
"""
import datetime
import json
import pathlib
import subprocess
import sys
import tempfile
import zipfile

MAP = "litellm/model_prices_and_context_window_backup.json"
PROVIDERS = {"openai", "anthropic"}
MODES = {"chat", "responses", "embedding", "completion"}
OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/infermux/data/model_prices.json"


def per_million(entry, key):
    value = entry.get(key)
    return None if value is None else round(value * 1_000_000, 6)


def main():
    spec = "litellm" + (f"=={sys.argv[1]}" if len(sys.argv) > 1 else "")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, spec], check=True)
        wheel = next(pathlib.Path(tmp).glob("litellm-*.whl"))
        version = wheel.name.split("-")[1]
        with zipfile.ZipFile(wheel) as z:
            prices = json.loads(z.read(MAP))
    models = {}
    for name, e in sorted(prices.items()):
        if not isinstance(e, dict) or "/" in name or e.get("litellm_provider") not in PROVIDERS:
            continue
        if e.get("mode") not in MODES or e.get("input_cost_per_token") is None:
            continue
        models[name] = [
            per_million(e, "input_cost_per_token"),
            per_million(e, "output_cost_per_token") or 0.0,
            per_million(e, "cache_read_input_token_cost"),
            per_million(e, "cache_creation_input_token_cost"),
            per_million(e, "output_cost_per_reasoning_token"),
        ]
    table = {
        "source": f"litellm {version} (PyPI), {MAP}",
        "taken": datetime.date.today().isoformat(),
        "columns": ["input_per_million", "output_per_million", "cached_input_per_million",
                    "cache_write_per_million", "reasoning_per_million"],
        "models": models,
    }
    # One model per line: a refresh reads as a diff of prices.
    lines = [f'  {json.dumps(name)}: {json.dumps(row)}' for name, row in models.items()]
    head = {k: v for k, v in table.items() if k != "models"}
    text = json.dumps(head, indent=2)[:-2] + ',\n  "models": {\n' + ",\n".join("  " + l for l in lines) + "\n  }\n}\n"
    json.loads(text)
    OUT.write_text(text)
    print(f"{OUT}: {len(models)} models from litellm {version}")


if __name__ == "__main__":
    main()
