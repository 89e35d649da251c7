"""How fast a teacher and its students generate on this device: latency measured with
diffusers (`bksdm bench`) and the shared timing used by the WebUI's Latency tab, plus
what the device is (GPU, software versions, Jetson board, power mode, clocks,
tegrastats).  It may import `model`, `scores` and `jobs` (an evaluation or block scan run as a
background job writes the runner's event file), never `train`, `webui` or A1111.
"""
