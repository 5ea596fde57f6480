"""Put the payload folder on sys.path so tests import `fedtf` the way server.py/client.py do."""
import os
import sys

PAYLOAD_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "fedctl", "payloads", "fedavg_tf"))
if PAYLOAD_DIR not in sys.path:
    sys.path.insert(0, PAYLOAD_DIR)
