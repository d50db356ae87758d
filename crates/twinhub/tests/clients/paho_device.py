"""A device written with the Eclipse Paho Python client, unchanged:
connects with its credentials, publishes QoS 1 telemetry, answers one
command. Usage: paho_device.py PORT DEVICE_ID KEY VERSION(4|5) [ws]
(with "ws", PORT is the HTTP port and MQTT runs over WebSocket at /mqtt)"""
import json
import sys
import threading

import paho.mqtt.client as mqtt

port, device, key, version = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
websocket = len(sys.argv) > 5 and sys.argv[5] == "ws"
protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=protocol,
                     transport="websockets" if websocket else "tcp")
if websocket:
    client.ws_set_options(path="/mqtt")
client.username_pw_set(device, key)
done = threading.Event()
failed = []


def on_connect(c, userdata, flags, reason, properties):
    if reason != 0:
        failed.append(f"connect refused: {reason}")
        done.set()
        return
    c.subscribe(f"devices/{device}/commands/#", qos=1)


def on_subscribe(c, userdata, mid, reasons, properties):
    # Not waiting here: callbacks run on the network loop's thread.
    c.publish(f"devices/{device}/telemetry", json.dumps({"temperature": 350.25, "source": "paho"}), qos=1)


def on_message(c, userdata, msg):
    request_id = msg.topic.rsplit("/", 1)[1]
    c.publish(f"devices/{device}/replies/{request_id}", json.dumps({"status": 200, "payload": json.loads(msg.payload)}), qos=1)
    done.set()


client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.connect("127.0.0.1", port, keepalive=30)
client.loop_start()
ok = done.wait(20)
client.loop_stop()
if failed or not ok:
    print("FAILED", failed, flush=True)
    sys.exit(1)
print("replied", flush=True)
