"""qpu_k8s.deviceplugin: ``quantum.example.com/qpu`` through the kubelet device-plugin API.

A pod asking for ``quantum.example.com/qpu: 1`` gets one lane of a QuantumBackend: the QPU
is acquired through QRMI in ``Allocate``, the container gets the QRMI env contract, and the
acquisition is released once its container has ended for good (or, without API access,
once the PodResources API no longer lists it).

One module per concern:

* ``registration`` serves our socket, registers (``v1beta1``), re-registers after kubelet
  restarts; ``server`` is the ``v1beta1.DevicePlugin`` servicer (the gRPC edge: options,
  error kinds to statuses).
* ``devices`` turns the :class:`~qpu_k8s.node.registry.BackendRegistry` into versioned
  device lists for ListAndWatch, and answers GetPreferredAllocation.
* ``allocator``: Allocate → acquire → env contract (all-or-nothing, credential path).
  ``state``: the acquisition state machine on the journal, and the book of the releases it
  owes (paid by :mod:`qpu_k8s.node.releases`). ``podresources``: the PodResources client
  and the reconciler that binds and decides releases.
* ``metrics``, ``agent`` (wiring), ``cli`` (``qpu-k8s device-plugin``).
"""
