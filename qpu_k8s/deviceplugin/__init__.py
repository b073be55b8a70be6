"""qpu_k8s.deviceplugin: ``quantum.example.com/qpu`` through the kubelet device-plugin API.

A pod asking for ``quantum.example.com/qpu: 1`` gets one lane of a QuantumBackend: the QPU
is acquired through QRMI in ``Allocate``, the container gets the QRMI env contract, and the
acquisition is released once the PodResources API no longer lists the pod.

One module per concern:

* ``registration`` serves our socket, registers (``v1beta1``), re-registers after kubelet
  restarts; ``server`` is the ``v1beta1.DevicePlugin`` servicer (which options and why).
* ``devices`` turns the :class:`~qpu_k8s.node.registry.BackendRegistry` (config reload,
  credentials, health probes) into versioned device lists for ListAndWatch, and answers
  GetPreferredAllocation.
* ``allocator``: Allocate → acquire → env contract (all-or-nothing, credential path), and
  every release. ``state``: the acquisition state machine and its checkpoint.
  ``podresources``: the PodResources client and the release reconciler.
* ``node`` (node labels), ``metrics``, ``agent`` (wiring), ``cli`` (``qpu-k8s device-plugin``).
"""
