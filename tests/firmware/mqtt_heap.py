# Heap taken by the MQTT client's modules and one client, on MicroPython (not a test: prints).
#   cd /tmp && MICROPYPATH=/work/main/build/firmware micropython /work/main/tests/firmware/mqtt_heap.py
# Run it from a directory without firmware_py/ in it, so that the .mpy image is what loads.
import gc

gc.collect()
a0 = gc.mem_alloc()
from firmware_py import mqtt_codec  # noqa: E402
gc.collect()
a1 = gc.mem_alloc()
from firmware_py import mqtt  # noqa: E402
gc.collect()
a2 = gc.mem_alloc()
c = mqtt.MQTTClient("d1", "127.0.0.1", 1883, max_packet=512, rx_size=128)
gc.collect()
a3 = gc.mem_alloc()
print("mqtt_codec %d B, mqtt %d B, one client (max_packet=512, rx_size=128) %d B"
      % (a1 - a0, a2 - a1, a3 - a2))
