"""Open Inference Protocol v2 (KServe v2 / Triton) over REST, so Triton and KServe clients score reviews unchanged.

    GET  /v2                                      server metadata
    GET  /v2/health/live, /v2/health/ready        liveness; readiness (a real inference per model, as /readyz)
    GET  /v2/models/{name}[/versions/{v}]         model metadata: input `text` BYTES [-1]; outputs `label` BYTES [-1]
                                                  and `probabilities` FP32 [-1, 2] (columns in the model's label order)
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer   JSON tensors, or the binary tensor data extension (tritonclient's
                                                  default): a JSON header of `Inference-Header-Content-Length` bytes,
                                                  then each binary input's bytes (BYTES: 4-byte little-endian length
                                                  + UTF-8 per element); outputs come back the same way when asked

Scores go through `protocol.score`, the /v1/sentiment path, so both answer the same numbers. Errors are the
protocol's `{"error": "message"}` (400 for a malformed request). Model metadata and inference need the API key when
keys are configured; the health routes and /v2 do not, like /healthz and /readyz. Only the version being served is
known: another version is a 404 (a hot reload replaces the version, see service/reload.py).
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from service.errors import ApiError, validation_message
from service.routes import State, health, require_api_key
from service.routes.protocol import check_texts, protocol_route, score
from service.runtime import ModelRuntime
from service.schemas import ErrorResponse, Text

INPUT = "text"
OUTPUTS = ("label", "probabilities")
HEADER_LENGTH = "Inference-Header-Content-Length"
KEY = [Depends(require_api_key)]


def _error(status: int, code: str, message: str, headers: dict[str, str] | None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class ProtocolError(BaseModel):
    error: str = Field(description="what was wrong (the protocol's error shape)")


# Every status these routes answer besides 200, in the protocol's shape (also the API key's 401 and the client-gone
# 499), so OpenAPI documents them.
# 401 and the body-size 413 come from the service's middleware, before these routes: its own error shape.
ERRORS: dict[int | str, dict[str, Any]] = {
    **{status: {"model": ProtocolError} for status in (400, 404, 422, 499, 503)},
    **{status: {"model": ProtocolError | ErrorResponse} for status in (401, 413)},
}
router = APIRouter(prefix="/v2", tags=["open inference protocol v2"], route_class=protocol_route(_error, 400), responses=ERRORS)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestInput(_Strict):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestOutput(_Strict):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(_Strict):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


TEXTS = TypeAdapter(list[Text])


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)


def _model(state, name: str, version: str | None) -> ModelRuntime:
    rt = state.model(name)
    if version is not None and version != rt.version:
        raise ApiError(404, "unknown_version", f"model {name!r} has no version {version!r} (serving {rt.version!r})")
    return rt


def _metadata(rt: ModelRuntime) -> dict:
    return {
        "name": rt.name,
        "versions": [rt.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(rt.labels)]},
        ],
    }


# -- request decoding ------------------------------------------------------------------------------------------------
def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise _bad(f"{HEADER_LENGTH} is {header_length!r}, the body has {len(body)} bytes")
    return body[: int(header_length)], body[int(header_length) :]


def _parse(header: bytes) -> InferRequest:
    try:
        return InferRequest.model_validate_json(header)
    except ValidationError as exc:
        _, message = validation_message(RequestValidationError(exc.errors()))
        raise _bad(message) from None


def _unpack_bytes(raw: bytes) -> list[str]:
    """BYTES tensor data in the binary extension: per element a uint32 little-endian length, then that many bytes."""
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise _bad("binary BYTES data ends inside an element's length prefix")
        (size,) = struct.unpack_from("<I", raw, at)
        chunk = raw[at + 4 : at + 4 + size]
        if len(chunk) != size:
            raise _bad(f"binary BYTES element of {size} bytes runs past the end of the data")
        try:
            out.append(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            raise _bad(f"BYTES element {len(out)} is not UTF-8 text") from None
        at += 4 + size
    return out


def _flatten(data: list) -> list:
    # The protocol allows row-major nested arrays as well as flat ones.
    return [x for row in data for x in (_flatten(row) if isinstance(row, list) else [row])]


def _texts(req: InferRequest, binary: bytes) -> list[str]:
    if len(req.inputs) != 1 or req.inputs[0].name != INPUT:
        raise _bad(f"expected one input named {INPUT!r}, got {[i.name for i in req.inputs]}")
    inp = req.inputs[0]
    if inp.datatype != "BYTES":
        raise _bad(f"input {INPUT!r} has datatype {inp.datatype}, expected BYTES")
    if len(inp.shape) not in (1, 2) or (len(inp.shape) == 2 and inp.shape[1] != 1) or min(inp.shape, default=0) < 0:
        raise _bad(f"input {INPUT!r} has shape {inp.shape}, expected [N] (or [N, 1])")
    size = (inp.parameters or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or size > len(binary) or inp.data is not None:
            raise _bad(f"input {INPUT!r}: binary_data_size {size!r} does not fit the {len(binary)} bytes after the header")
        items = _unpack_bytes(binary[:size])
    elif inp.data is not None:
        items = _flatten(inp.data)
    else:
        raise _bad(f"input {INPUT!r} has neither data nor binary_data_size")
    if len(items) != math.prod(inp.shape):
        raise _bad(f"input {INPUT!r} has shape {inp.shape} but {len(items)} elements")
    try:
        return TEXTS.validate_python(items)
    except ValidationError as exc:
        _, message = validation_message(RequestValidationError([{**e, "loc": (INPUT, *e["loc"])} for e in exc.errors()]))
        raise _bad(message) from None


def _wanted(req: InferRequest) -> dict[str, bool]:
    """Output name -> whether it goes back as binary data."""
    default = bool((req.parameters or {}).get("binary_data_output", False))
    if not req.outputs:
        return dict.fromkeys(OUTPUTS, default)
    wanted = {}
    for out in req.outputs:
        if out.name not in OUTPUTS:
            raise _bad(f"unknown output {out.name!r} (outputs: {', '.join(OUTPUTS)})")
        params = out.parameters or {}
        if params.get("classification"):
            raise _bad("the classification extension is not supported; request `label` and `probabilities`")
        wanted[out.name] = bool(params.get("binary_data", default))
    return wanted


# -- response encoding -----------------------------------------------------------------------------------------------
def _tensor(name: str, labels: list[str], probs: np.ndarray) -> tuple[str, list[int], list, bytes]:
    """(datatype, shape, JSON data, binary data) of one output."""
    if name == "label":
        chosen = [labels[i] for i in probs.argmax(axis=1)]
        raw = b"".join(struct.pack("<I", len(b)) + b for b in (c.encode() for c in chosen))
        return "BYTES", [len(chosen)], chosen, raw
    values = probs.astype("<f4", copy=False)
    return "FP32", list(values.shape), values.ravel().tolist(), values.tobytes()


def _response(req: InferRequest, rt: ModelRuntime, probs: np.ndarray) -> Response:
    outputs, blobs = [], []
    for name, binary in _wanted(req).items():
        datatype, shape, data, raw = _tensor(name, rt.labels, probs)
        out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            out["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            out["data"] = data
        outputs.append(out)
    body = {"model_name": rt.name, "model_version": rt.version, "outputs": outputs}
    if req.id is not None:
        body["id"] = req.id
    if not blobs:
        return JSONResponse(body)
    header = json.dumps(body).encode()
    return Response(header + b"".join(blobs), media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(header))})


# -- routes ----------------------------------------------------------------------------------------------------------
@router.get("", summary="Server metadata")
async def server_metadata(request: Request) -> dict:
    return {"name": "imdb-sentiment", "version": request.app.version, "extensions": ["binary_tensor_data"]}


@router.get("/health/live", summary="Liveness (no model work)")
async def live() -> dict:
    return {"live": True}


@router.get("/health/ready", summary="Readiness: a real inference per model")
async def ready(state: State) -> dict:
    await health.readyz(state)  # raises the 503 when any model fails its check
    return {"ready": True}


@router.get("/models/{name}/ready", summary="Model readiness")
@router.get("/models/{name}/versions/{version}/ready", summary="Model version readiness")
async def model_ready(name: str, state: State, version: str | None = None) -> dict:
    rt = _model(state, name, version)
    if not state.batchers[rt.name].running:
        raise ApiError(503, "not_ready", f"model {name!r} is not running", state.retry_after())
    return {"name": rt.name, "ready": True}


@router.get("/models/{name}", summary="Model metadata", dependencies=KEY)
@router.get("/models/{name}/versions/{version}", summary="Model version metadata", dependencies=KEY)
async def model_metadata(name: str, state: State, version: str | None = None) -> dict:
    return _metadata(_model(state, name, version))


@router.post("/models/{name}/infer", summary="Score review texts (input `text`, BYTES [N])", dependencies=KEY)
@router.post("/models/{name}/versions/{version}/infer", summary="Score with a given model version", dependencies=KEY)
async def infer(name: str, request: Request, state: State, version: str | None = None) -> Response:
    header, binary = _split_body(await request.body(), request.headers.get(HEADER_LENGTH))
    req = _parse(header)
    texts = _texts(req, binary)
    _wanted(req)  # a bad output request is refused before any model work
    check_texts(state, texts, lambda i: f"{INPUT}[{i}]")
    rt = _model(state, name, version)  # resolved after the last await before scoring: see protocol.score
    _, probs = await score(request, state, rt, texts, lambda i: f"{INPUT}[{i}]")
    return _response(req, rt, probs)
