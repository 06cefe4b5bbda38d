//! The OpenAPI 3.1 document of the JSON API, written by hand and served at
//! `/api/openapi.json`. A test checks that its paths and methods are exactly
//! the API routes the router serves.

use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn ok(description: &str, schema: Value) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": schema } }
    })
}

fn param(name: &str, place: &str, description: &str, schema: Value, required: bool) -> Value {
    json!({
        "name": name, "in": place, "description": description,
        "required": required, "schema": schema
    })
}

fn key_param() -> Value {
    param(
        "key",
        "path",
        "The asset key; a key with `/` is sent with `%2F`, e.g. `analytics%2Fevents`.",
        json!({ "type": "string" }),
        true,
    )
}

fn run_param() -> Value {
    param(
        "id",
        "path",
        "A run id (UUID).",
        json!({ "type": "string", "format": "uuid" }),
        true,
    )
}

fn partition_param() -> Value {
    param(
        "partition",
        "query",
        "A partition key; needed for a partitioned asset, refused for another.",
        json!({ "type": "string" }),
        false,
    )
}

fn obj() -> Value {
    json!({ "type": "object" })
}

/// The document.
pub fn document() -> Value {
    let unknown_asset = error_response("unknown asset (`unknown_asset`)");
    let bad_partition = error_response("bad partition key or range (`bad_partition`, `bad_range`)");
    let bad_request = error_response("malformed query or body (`bad_request`)");
    let unknown_run = error_response("unknown run (`unknown_run`)");
    let forbidden = error_response("a token without the `launch` right (`forbidden`)");
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "FlowStone API",
            "version": "1",
            "description": "Assets, partitions, materializations, lineage and runs of a \
                FlowStone code location, and a live event stream. Errors are \
                `{\"error\": {\"code\", \"message\"}}` with a stable code. Once an API token \
                exists (`tokens create NAME --right read|launch`), send `Authorization: Bearer \
                TOKEN`; without a valid one every request but `/api/v1/health` gets 401 \
                (`unauthorized`), and launching, cancelling or resuming with a `read` token \
                gets 403 (`forbidden`)."
        },
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" },
                "cookie": { "type": "apiKey", "in": "cookie", "name": crate::auth::COOKIE }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": { "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": { "type": "string", "enum": [
                                "unknown_asset", "bad_partition", "bad_range", "bad_request",
                                "unknown_run", "not_found", "method_not_allowed", "unauthorized",
                                "forbidden", "payload_too_large", "conflict", "internal"
                            ] },
                            "message": { "type": "string" }
                        }
                    } }
                },
                "Counts": {
                    "type": "object",
                    "properties": {
                        "total": { "type": "integer" }, "materialized": { "type": "integer" },
                        "stale": { "type": "integer" }, "failed": { "type": "integer" },
                        "missing": { "type": "integer" }
                    }
                },
                "Asset": {
                    "type": "object",
                    "properties": {
                        "key": { "type": "string" },
                        "description": { "type": ["string", "null"] },
                        "group": { "type": ["string", "null"] },
                        "code_version": { "type": "string" },
                        "queue": { "type": "string" },
                        "queue_limit": { "type": ["integer", "null"] },
                        "upstream": { "type": "array", "items": { "type": "string" } },
                        "downstream": { "type": "array", "items": { "type": "string" } },
                        "partitions": { "type": ["object", "null"], "properties": {
                            "kind": { "type": "string" }, "description": { "type": "string" },
                            "count": { "type": "integer" }
                        } },
                        "counts": { "$ref": "#/components/schemas/Counts" },
                        "latest": { "type": ["object", "null"] }
                    }
                },
                "Partition": {
                    "type": "object",
                    "properties": {
                        "index": { "type": "integer" }, "partition": { "type": "string" },
                        "state": { "type": "string",
                                   "enum": ["materialized", "stale", "failed", "missing"] },
                        "reason": { "type": "string" },
                        "latest": { "type": ["integer", "null"] },
                        "materialized_at": { "type": ["string", "null"], "format": "date-time" }
                    }
                },
                "LaunchRequest": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "assets": { "type": "array", "items": { "type": "string" },
                                    "description": "asset keys; empty or absent: every asset" },
                        "mode": { "type": "string", "enum": ["materialize", "backfill"],
                                  "default": "materialize" },
                        "partitions": { "type": "array", "items": { "type": "string" } },
                        "from": { "type": "string" },
                        "to": { "type": "string" },
                        "all": { "type": "boolean" },
                        "with_upstream": { "type": "boolean" },
                        "force": { "type": "boolean" },
                        "stale": { "type": "boolean" },
                        "max_parallel": { "type": "integer", "minimum": 1, "maximum": 4096 }
                    }
                },
                "Event": {
                    "type": "object",
                    "properties": {
                        "id": { "type": "integer" }, "run_id": { "type": "string" },
                        "step_id": { "type": ["integer", "null"] },
                        "at": { "type": "string", "format": "date-time" },
                        "kind": { "type": "string" }, "level": { "type": "string" },
                        "message": { "type": "string" }, "data": {}
                    }
                }
            }
        },
        "security": [ { "bearer": [] }, { "cookie": [] } ],
        "paths": {
            "/api/openapi.json": { "get": {
                "summary": "This document",
                "responses": { "200": ok("the OpenAPI document", obj()) }
            } },
            "/api/v1/health": { "get": {
                "summary": "Liveness; needs no token",
                "security": [],
                "responses": { "200": ok("the server answers", obj()) }
            } },
            "/api/v1/assets": { "get": {
                "summary": "Every asset with its partitions definition, status counts and latest \
                            materialization",
                "responses": { "200": ok("the assets", json!({ "type": "object", "properties": {
                    "assets": { "type": "array", "items": { "$ref": "#/components/schemas/Asset" } }
                } })) }
            } },
            "/api/v1/assets/{key}": { "get": {
                "summary": "One asset",
                "parameters": [key_param()],
                "responses": {
                    "200": ok("the asset", json!({ "$ref": "#/components/schemas/Asset" })),
                    "404": unknown_asset
                }
            } },
            "/api/v1/assets/{key}/partitions": { "get": {
                "summary": "A page of an asset's partitions with their state, by index \
                            (offset) or key range (from, to), optionally of one state",
                "parameters": [
                    key_param(),
                    param("offset", "query", "index of the first partition", json!({ "type": "integer", "minimum": 0 }), false),
                    param("limit", "query", "page size, 1 to 10000 (default 100)", json!({ "type": "integer" }), false),
                    param("state", "query", "only partitions in this state", json!({ "type": "string", "enum": ["materialized", "stale", "failed", "missing"] }), false),
                    param("from", "query", "first partition key of a range", json!({ "type": "string" }), false),
                    param("to", "query", "last partition key of a range (included)", json!({ "type": "string" }), false)
                ],
                "responses": {
                    "200": ok("a page", json!({ "type": "object", "properties": {
                        "total": { "type": "integer" },
                        "counts": { "$ref": "#/components/schemas/Counts" },
                        "partitions": { "type": "array", "items": { "$ref": "#/components/schemas/Partition" } }
                    } })),
                    "400": bad_partition,
                    "404": unknown_asset
                }
            } },
            "/api/v1/assets/{key}/partitions/ranges": { "get": {
                "summary": "The whole partition space as runs of consecutive partitions in one \
                            state (computed from the records, never by listing every key)",
                "parameters": [key_param()],
                "responses": {
                    "200": ok("the ranges", json!({ "type": "object", "properties": {
                        "ranges": { "type": "array", "items": { "type": "object", "properties": {
                            "state": { "type": "string" }, "from": { "type": "string" },
                            "to": { "type": "string" }, "from_index": { "type": "integer" },
                            "to_index": { "type": "integer" }, "count": { "type": "integer" }
                        } } }
                    } })),
                    "400": bad_partition,
                    "404": unknown_asset
                }
            } },
            "/api/v1/assets/{key}/materializations/latest": { "get": {
                "summary": "The latest materialization of an asset partition, with its metadata, \
                            the materializations it read and those that read it",
                "parameters": [key_param(), partition_param()],
                "responses": {
                    "200": ok("the materialization", obj()),
                    "400": bad_partition,
                    "404": error_response("unknown asset, or never materialized")
                }
            } },
            "/api/v1/assets/{key}/lineage": { "get": {
                "summary": "Lineage of the latest materialization, upstream or downstream",
                "parameters": [
                    key_param(), partition_param(),
                    param("direction", "query", "upstream (default) or downstream", json!({ "type": "string", "enum": ["upstream", "downstream"] }), false),
                    param("depth", "query", "follow at most this many edges", json!({ "type": "integer", "minimum": 1 }), false)
                ],
                "responses": {
                    "200": ok("the lineage graph", obj()),
                    "400": bad_partition,
                    "404": error_response("unknown asset, or never materialized")
                }
            } },
            "/api/v1/assets/{key}/impact": { "get": {
                "summary": "Every downstream asset partition that goes stale if this one changes",
                "parameters": [key_param(), partition_param()],
                "responses": {
                    "200": ok("the impact", obj()),
                    "400": bad_partition,
                    "404": unknown_asset
                }
            } },
            "/api/v1/materializations/{id}": { "get": {
                "summary": "One materialization, with its inputs and consumers",
                "parameters": [param("id", "path", "materialization id", json!({ "type": "integer" }), true)],
                "responses": {
                    "200": ok("the materialization", obj()),
                    "400": bad_request,
                    "404": error_response("no such materialization")
                }
            } },
            "/api/v1/runs": {
                "get": {
                    "summary": "Runs, newest first",
                    "parameters": [param("limit", "query", "1 to 10000 (default 50)", json!({ "type": "integer" }), false)],
                    "responses": { "200": ok("the runs", obj()), "400": bad_request }
                },
                "post": {
                    "summary": "Launch a materialization or a backfill; the server works on it",
                    "requestBody": { "required": true, "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/LaunchRequest" }
                    } } },
                    "responses": {
                        "201": ok("started: the run id", obj()),
                        "200": ok("nothing to do; run_id is null, and `message` says why: \
                                   `already_materialized` partitions exist, `already_queued` \
                                   are held by other runs (`already_queued_examples` names them)",
                                  obj()),
                        "400": bad_partition,
                        "403": forbidden,
                        "404": unknown_asset,
                        "409": error_response("upstream not materialized (`conflict`)"),
                        "413": error_response(
                            "a body over 1 MiB, the limit for every request (`payload_too_large`)"
                        )
                    }
                }
            },
            "/api/v1/runs/{id}": { "get": {
                "summary": "A run and its steps",
                "parameters": [run_param()],
                "responses": { "200": ok("the run", obj()), "400": bad_request, "404": unknown_run }
            } },
            "/api/v1/runs/{id}/events": { "get": {
                "summary": "A run's events in order, paged after an event id",
                "parameters": [
                    run_param(),
                    param("after", "query", "event id to read after", json!({ "type": "integer" }), false),
                    param("limit", "query", "1 to 10000 (default 1000)", json!({ "type": "integer" }), false)
                ],
                "responses": { "200": ok("the events", obj()), "400": bad_request, "404": unknown_run }
            } },
            "/api/v1/runs/{id}/cancel": { "post": {
                "summary": "Cancel a run: steps not yet running are cancelled",
                "parameters": [run_param()],
                "responses": { "200": ok("whether it changed", obj()), "403": forbidden, "404": unknown_run }
            } },
            "/api/v1/runs/{id}/resume": { "post": {
                "summary": "Continue an interrupted run in this server",
                "parameters": [
                    run_param(),
                    param("max_parallel", "query", "steps at once, 1 to 4096", json!({ "type": "integer" }), false)
                ],
                "responses": {
                    "202": ok("resumed", obj()), "403": forbidden, "404": unknown_run,
                    "409": error_response("the run has ended or a live worker holds it")
                }
            } },
            "/api/v1/events": { "get": {
                "summary": "Server-sent events: run, step and materialization events as they \
                            are recorded. Each has `id` (event id), `event` (its kind, e.g. \
                            `materialized`, `run_finished`) and `data` (the event as JSON). \
                            Reconnecting with `Last-Event-ID` (or `after`) replays what was \
                            missed. The stream's token is checked again every 5 seconds: the stream \
                            ends once it is revoked or has expired.",
                "parameters": [
                    param("after", "query", "replay events after this id first", json!({ "type": "integer" }), false),
                    param("run", "query", "only this run's events", json!({ "type": "string", "format": "uuid" }), false)
                ],
                "responses": {
                    "200": { "description": "the stream", "content": { "text/event-stream": {
                        "schema": { "$ref": "#/components/schemas/Event" } } } },
                    "400": bad_request,
                    "404": unknown_run
                }
            } }
        }
    })
}
