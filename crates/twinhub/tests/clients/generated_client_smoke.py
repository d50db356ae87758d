"""Drives twinhub through a client generated from its OpenAPI document by
openapi-python-client, unchanged: log in, create a device, post telemetry
as the device, read the history back. Prints the history as JSON.
Usage: generated_client_smoke.py GENERATED_DIR BASE_URL ADMIN_PASSWORD"""
import json
import sys

sys.path.insert(0, sys.argv[1])
base, password = sys.argv[2], sys.argv[3]

from twinhub_client import AuthenticatedClient, Client
from twinhub_client.api.auth import login
from twinhub_client.api.devices import create_device
from twinhub_client.api.history import get_history
from twinhub_client.api.telemetry import post_telemetry
from twinhub_client.models import CreateDevice, DeviceCreated, IngestReceipt, LoginRequest, TokenResponse

token = login.sync(client=Client(base_url=base), body=LoginRequest(username="admin", password=password))
assert isinstance(token, TokenResponse), token
admin = AuthenticatedClient(base_url=base, token=token.access_token)
device = create_device.sync(client=admin, body=CreateDevice(id="generated-1"))
assert isinstance(device, DeviceCreated), device
as_device = Client(base_url=base, httpx_args={"auth": ("generated-1", device.key)})
receipt = post_telemetry.sync(
    id="generated-1",
    client=as_device,
    body=[{"ts": 1764500000000, "temperature": 351.5}, {"ts": 1764500001000, "temperature": 352.0}],
)
assert isinstance(receipt, IngestReceipt), receipt
history = get_history.sync_detailed(id="generated-1", name="temperature", client=admin, from_="0")
assert history.status_code == 200, history
print(json.dumps(json.loads(history.content)))
