namespace Engine.Cuda;

/// <summary>
/// One decode step recorded as a CUDA graph and replayed with a single launch: a step of a 1B model is
/// hundreds of small kernels, and launching each from the host costs more than the GPU's work. Each
/// step is captured again (capture only records, it launches nothing) and applied to the executable
/// graph with cuGraphExecUpdate, which keeps the instantiated graph when only kernel arguments and
/// grid sizes changed; when the step's shape changed, the graph is instantiated anew. llama.cpp's CUDA
/// backend does the same. For the update to succeed every step, a step must record the same nodes: each
/// host input (tokens, positions, block table) is copied once in every capture, even when its contents
/// did not change — skipping an unchanged block table was what made every 16th step re-instantiate
/// (48 instantiations for 768 replays, graphs slower than direct launches).
/// </summary>
internal sealed unsafe class DecodeGraph(GpuDevice device) : IDisposable
{
    private IntPtr _exec;
    private bool _updateMissing;

    public bool Capturing { get; private set; }

    /// <summary>Counts captures begun: host inputs copy once per capture (see CudaBackend.HostInput).</summary>
    public long Capture { get; private set; }

    /// <summary>Steps replayed, and how many of them needed a new instantiation.</summary>
    public long Replays { get; private set; }

    public long Instantiations { get; private set; }

    public void Begin()
    {
        using var _ = device.Bind();
        Driver.Check(GraphDriver.StreamBeginCapture(device.Stream, GraphDriver.CaptureModeRelaxed));
        Capturing = true;
        Capture++;
    }

    /// <summary>Ends the capture and launches the step's graph on the stream.</summary>
    public void EndAndLaunch()
    {
        using var _ = device.Bind();
        Capturing = false;
        Driver.Check(GraphDriver.StreamEndCapture(device.Stream, out IntPtr graph));
        try
        {
            if (_exec != IntPtr.Zero && !TryUpdate(graph))
            {
                GraphDriver.GraphExecDestroy(_exec);
                _exec = IntPtr.Zero;
            }
            if (_exec == IntPtr.Zero)
            {
                Driver.Check(GraphDriver.GraphInstantiateWithFlags(out _exec, graph, 0));
                Instantiations++;
            }
            Driver.Check(GraphDriver.GraphLaunch(_exec, device.Stream));
            Replays++;
        }
        finally
        {
            GraphDriver.GraphDestroy(graph);
        }
    }

    /// <summary>Ends a capture that an error interrupted, dropping what was recorded.</summary>
    public void Abandon()
    {
        if (!Capturing)
            return;
        using var _ = device.Bind();
        Capturing = false;
        if (GraphDriver.StreamEndCapture(device.Stream, out IntPtr graph) == 0 && graph != IntPtr.Zero)
            GraphDriver.GraphDestroy(graph);
    }

    private bool TryUpdate(IntPtr graph)
    {
        if (_updateMissing)
            return false;
        byte* info = stackalloc byte[64];
        try
        {
            return GraphDriver.GraphExecUpdate(_exec, graph, info) == 0;
        }
        catch (EntryPointNotFoundException)
        {
            _updateMissing = true; // a driver older than CUDA 12: instantiate every step instead
            return false;
        }
    }

    public void Dispose()
    {
        Abandon();
        if (_exec != IntPtr.Zero)
        {
            using (device.Bind())
                GraphDriver.GraphExecDestroy(_exec);
            _exec = IntPtr.Zero;
        }
    }
}
