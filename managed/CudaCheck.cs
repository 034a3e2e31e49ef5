using System.Runtime.CompilerServices;
using ILGPU.Runtime.Cuda;

namespace Engine.Cuda;

/// <summary>A CUDA driver call failed; the message names the call and the driver's error.</summary>
public sealed class CudaException(string message) : Exception(message);

internal static class CudaCheck
{
    /// <summary>Throws if a driver call did not succeed, naming the call (dotnet/runtime's ThrowIfFailed pattern).</summary>
    public static void ThrowIfFailed(CudaError error, [CallerArgumentExpression(nameof(error))] string call = "")
    {
        if (error != CudaError.CUDA_SUCCESS)
            throw new CudaException($"{call} failed: {error} ({CudaAPI.CurrentAPI.GetErrorString(error)})");
    }
}
