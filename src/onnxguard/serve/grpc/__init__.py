"""The Open Inference Protocol over gRPC (KServe v2 ``inference.GRPCInferenceService``), on a second port.

Every call is translated into the equivalent HTTP request and sent through the same ASGI app, in the same
process and event loop (``asgi.py``), so keys, scopes, limits, budgets, validation, batching, audit and metrics
are the HTTP ones by construction; the answer is translated back (``tensors.py``, ``service.py``). The modules
``grpc_predict_v2_pb2*`` are generated from ``grpc_predict_v2.proto`` by ``make proto``.
"""
