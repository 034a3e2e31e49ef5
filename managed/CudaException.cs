namespace Engine.Cuda;

/// <summary>A CUDA driver call failed, or CUDA is not available; the message names the call and the reason.</summary>
public sealed class CudaException(string message) : Exception(message);
