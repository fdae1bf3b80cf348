"""The `workbench` command: generate, chat, serve, proxy, bench, dashboard.

Errors print one readable line to stderr and exit non-zero (no traceback).
"""

from __future__ import annotations

import argparse
import os
import sys


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="embedded",
                   help="'embedded' (SmolLM2-135M-Instruct), a local HF directory, a .gguf file, "
                        "or a Hugging Face Hub id (default: embedded)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 "
                                                 "(default: float32 on CPU, bfloat16 on GPU/TPU)")
    p.add_argument("--max-model-len", type=int, default=2048, help="context length (default 2048)")


def _add_sampling_args(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument("--max-tokens", type=int, default=max_tokens, help=f"default {max_tokens}")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=-1)
    p.add_argument("--seed", type=int, default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench", description="LLM inference workbench on JAX/Flax.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="complete a prompt",
                       description="Generate a completion for PROMPT and print it.")
    g.add_argument("prompt", help="the prompt text")
    _add_model_args(g)
    _add_sampling_args(g, 128)
    g.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")

    c = sub.add_parser("chat", help="interactive chat (streaming, with the chat template)",
                       description="Chat with the model. Empty line or Ctrl-D quits; /reset "
                                   "clears the history.")
    _add_model_args(c)
    _add_sampling_args(c, 512)
    c.add_argument("--system", default=None, help="system prompt")

    try:
        from workbench.server.cli import add_serve_parser
        from workbench.server.proxy.cli import add_proxy_parser
    except ImportError:  # the server's dependencies are optional
        add_serve_parser = add_proxy_parser = None
    if add_serve_parser is not None:
        add_serve_parser(sub)
        add_proxy_parser(sub)
    from workbench.loadgen_cli import add_bench_parser

    add_bench_parser(sub)
    try:  # the UI lives above the library: this entry point is the one place that sees both
        from widgets.cli import add_dashboard_parser
    except ImportError:  # widgets (or Panel) not installed
        add_dashboard_parser = None
    if add_dashboard_parser is not None:
        add_dashboard_parser(sub)
    return parser


def _sampling(args):
    from workbench.sampling_params import SamplingParams

    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                          top_p=args.top_p, top_k=args.top_k, seed=args.seed)


def _engine(args):
    from workbench.engines.vinference import vInference
    from workbench.loading.loader import load_model

    lm = load_model(args.model, dtype=args.dtype, progress=sys.stderr.isatty())
    return vInference(lm, max_batch_size=1, max_model_len=args.max_model_len)


def cmd_generate(args) -> int:
    params = _sampling(args)
    engine = _engine(args)
    prompt = args.prompt
    if args.chat:
        prompt, _ = engine.chat_prompt([{"role": "user", "content": args.prompt}])
    if args.stream:
        for out in engine.stream(prompt, params):
            print(out.outputs[0].delta_text, end="", flush=True)
        print()
    else:
        print(engine.generate(prompt, params)[0].outputs[0].text)
    return 0


def cmd_chat(args) -> int:
    params = _sampling(args)
    engine = _engine(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = []
    print(f"Chatting with {engine.model.name}. Empty line or Ctrl-D quits; /reset clears.",
          file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not line:
            return 0
        if line == "/reset":
            history.clear()
            continue
        history.append({"role": "user", "content": line})
        print("assistant> ", end="", flush=True)
        text = ""
        for out in engine.chat(system + history, params, stream=True):
            text += out.outputs[0].delta_text
            print(out.outputs[0].delta_text, end="", flush=True)
        print()
        history.append({"role": "assistant", "content": text})


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    handlers = {"generate": cmd_generate, "chat": cmd_chat}
    try:
        if args.command in handlers:
            return handlers[args.command](args)
        return args.func(args)  # serve, proxy, bench, dashboard: set by their sub-parsers
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError, ImportError) as e:
        print(f"workbench: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
