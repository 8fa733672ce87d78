"""An election scenario against a running `conclave serve`, through Python grpcio: the
proof that a standard, non-Rust gRPC client works unchanged.

Usage: election_scenario.py HOST:PORT [--cacert CA.pem [--cert CLIENT.pem --key CLIENT.key]]
With --cacert the channels are TLS (the server's certificate must chain to CA.pem); with
--cert/--key too they present a client certificate (mutual TLS).
Generates the client stubs from proto/ into a temporary directory (grpc_tools.protoc),
then: creates an election, two clients (two channels = two connections = two sessions)
enter, a watcher sees every change in order, the leader's client disconnects and the
watcher sees the next leader with a higher term, errors carry the documented codes.
Prints '<n> passed, 0 failed' on success and exits non-zero on the first failure.
"""
import argparse
import os
import sys
import tempfile
import threading
import queue
import atexit
import shutil

from grpc_tools import protoc
import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "..", "proto", "proto"))


def generate_stubs():
    out = tempfile.mkdtemp(prefix="conclave-py-stubs-")
    # The stubs are imported once at start-up; nothing reads the files afterwards.
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    files = [
        "atomix/runtime/v1/primitive.proto",
        "atomix/runtime/election/v1/election.proto",
    ]
    code = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if code != 0:
        raise SystemExit(f"protoc failed with {code}")
    for d, _, _ in os.walk(out):
        init = os.path.join(d, "__init__.py")
        if not os.path.exists(init):
            open(init, "w").close()
    sys.path.insert(0, out)


checks = 0


def check(cond, what):
    global checks
    if not cond:
        print(f"FAILED: {what}")
        print(f"{checks} passed, 1 failed")
        sys.exit(1)
    checks += 1


def channel_factory(args):
    """A function making a new channel to the target: plaintext, TLS or mutual TLS."""
    # A local subchannel pool per channel: each client gets its own TCP connection, so its
    # own session (grpcio otherwise shares one connection between channels to one target).
    own_connection = [("grpc.use_local_subchannel_pool", 1)]
    if args.cacert is None:
        return lambda: grpc.insecure_channel(args.target, options=own_connection)

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.cacert),
        private_key=read(args.key) if args.key else None,
        certificate_chain=read(args.cert) if args.cert else None,
    )
    return lambda: grpc.secure_channel(args.target, credentials, options=own_connection)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("--cacert")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    new_channel = channel_factory(args)
    generate_stubs()
    from atomix.runtime.v1 import primitive_pb2
    from atomix.runtime.election.v1 import election_pb2 as pb
    from atomix.runtime.election.v1 import election_pb2_grpc as rpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    name = "py-election"
    eid = primitive_pb2.PrimitiveID(name=name)
    alice_ch = new_channel()
    bob_ch = new_channel()
    watch_ch = new_channel()
    alice = rpc.LeaderElectionStub(alice_ch)
    bob = rpc.LeaderElectionStub(bob_ch)
    admin = rpc.LeaderElectionsStub(alice_ch)

    health = health_pb2_grpc.HealthStub(alice_ch)
    status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
    check(status == health_pb2.HealthCheckResponse.SERVING, f"health SERVING, got {status}")

    try:
        alice.GetTerm(pb.GetTermRequest(id=primitive_pb2.PrimitiveID(name="never-created")), timeout=10)
        check(False, "GetTerm of an election never created fails")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.NOT_FOUND, f"NOT_FOUND, got {e.code()}")
        check(len(e.details()) > 0, "the error carries a message")
    try:
        alice.Enter(pb.EnterRequest(id=eid, candidate=""), timeout=10)
        check(False, "an empty candidate is refused")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"INVALID_ARGUMENT, got {e.code()}")

    admin.Create(pb.CreateRequest(id=eid), timeout=10)
    first = alice.GetTerm(pb.GetTermRequest(id=eid), timeout=10).term
    start_term = first.term

    events = queue.Queue()
    watcher = rpc.LeaderElectionStub(watch_ch)
    stream = watcher.Watch(pb.WatchRequest(id=eid), timeout=60)

    def pump():
        try:
            for response in stream:
                events.put(response.term)
        except grpc.RpcError:
            pass

    threading.Thread(target=pump, daemon=True).start()
    initial = events.get(timeout=10)
    check(initial.term == start_term, "Watch starts with the current state")

    t = alice.Enter(pb.EnterRequest(id=eid, candidate="alice"), timeout=10).term
    check(t.leader == "alice" and t.term == start_term + 1, f"alice leads a new term: {t}")
    t = bob.Enter(pb.EnterRequest(id=eid, candidate="bob"), timeout=10).term
    check(list(t.candidates) == ["alice", "bob"], f"candidates list the leader first: {t}")

    seen = events.get(timeout=10)
    check(seen.leader == "alice", f"watcher sees alice lead: {seen}")
    seen = events.get(timeout=10)
    check(list(seen.candidates) == ["alice", "bob"], f"watcher sees bob join: {seen}")

    # Alice's client disconnects: her session closes at once and bob takes over.
    alice_ch.close()
    seen = events.get(timeout=10)
    check(seen.leader == "bob" and seen.term == start_term + 2, f"watcher sees bob lead after alice left: {seen}")
    t = bob.GetTerm(pb.GetTermRequest(id=eid), timeout=10).term
    check(t.leader == "bob" and list(t.candidates) == ["bob"], f"GetTerm agrees: {t}")

    t = bob.Withdraw(pb.WithdrawRequest(id=eid, candidate="bob"), timeout=10).term
    check(t.leader == "" and len(t.candidates) == 0, f"no leader after the last candidate withdraws: {t}")
    stream.cancel()
    bob_ch.close()
    watch_ch.close()
    print(f"{checks} passed, 0 failed")


if __name__ == "__main__":
    main()
