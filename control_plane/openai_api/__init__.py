"""The OpenAI-compatible protocol layer of the gateway, free of I/O.

Request side: `parse_chat_request` / `parse_completion_request` turn a raw body into a
GenerationSpec or raise ApiError (the OpenAI error shape and status). Response side:
`ResponseAssembler` (non-streaming) and `StreamAssembler` (SSE chunks) turn the engine's token
events into the exact OpenAI JSON. The HTTP server, routing and workers live elsewhere.

How a server uses it (one request):

    served = ServedModel.from_dir(model_dir, name="ling-2.6")  # once, at start-up
    try:
        spec = parse_chat_request(body_bytes, served)  # or parse_completion_request
    except ApiError as e:
        ...  # reply e.status with e.headers() and the JSON e.to_dict()
    # route spec.prompt_ids with spec.sampling; for each worker TokenEvent `ev`:
    if spec.stream:
        out = StreamAssembler(spec, served.tokenizer)
        send(out.add_sse(from_worker_event(ev)))   # the last one ends with "data: [DONE]"
        # on a failure after the first bytes went out: send(sse_error(api_error))
    else:
        out = ResponseAssembler(spec, served.tokenizer)
        out.add(from_worker_event(ev)); ...; reply 200 with out.response()
    # `out.pipeline.text_stopped` turns True when a stop string matched: end with
    # out.finish("stop") (or finish_sse) and abort the request on the workers.
"""

from control_plane.openai_api.errors import ApiError
from control_plane.openai_api.events import TokenEvent, from_sampled, from_worker_event
from control_plane.openai_api.requests import parse_chat_request, parse_completion_request
from control_plane.openai_api.responses import ResponseAssembler, ResponseIdentity
from control_plane.openai_api.spec import GenerationSpec, ServedModel, ToolChoice
from control_plane.openai_api.streaming import SSE_DONE, StreamAssembler, sse_error, sse_event

__all__ = [
    "SSE_DONE",
    "ApiError",
    "GenerationSpec",
    "ResponseAssembler",
    "ResponseIdentity",
    "ServedModel",
    "StreamAssembler",
    "TokenEvent",
    "ToolChoice",
    "from_sampled",
    "from_worker_event",
    "parse_chat_request",
    "parse_completion_request",
    "sse_error",
    "sse_event",
]
