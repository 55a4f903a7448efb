"""The GPUs a vLLM process was given, from the device plugin's environment."""

from vllm_hooks.config.gpu_identity import visible_gpu_uuids


def test_uuids_from_the_device_plugin() -> None:
    env = {"NVIDIA_VISIBLE_DEVICES": "GPU-aa, GPU-bb"}
    assert visible_gpu_uuids(env) == ("GPU-aa", "GPU-bb")
    assert visible_gpu_uuids({"NVIDIA_VISIBLE_DEVICES": "MIG-1"}) == ("MIG-1",)


def test_cuda_visible_devices_narrows_when_it_names_uuids() -> None:
    env = {"NVIDIA_VISIBLE_DEVICES": "GPU-aa,GPU-bb", "CUDA_VISIBLE_DEVICES": "GPU-bb"}
    assert visible_gpu_uuids(env) == ("GPU-bb",)
    # Indices cannot be resolved without NVML: the device plugin's list stands.
    env["CUDA_VISIBLE_DEVICES"] = "1"
    assert visible_gpu_uuids(env) == ("GPU-aa", "GPU-bb")


def test_nothing_resolvable_gives_no_uuids() -> None:
    for value in ("all", "void", "none", "0,1", "GPU-aa,1", ""):
        assert visible_gpu_uuids({"NVIDIA_VISIBLE_DEVICES": value}) == (), value
    assert visible_gpu_uuids({}) == ()
