namespace Engine.Tests;

/// <summary>
/// Runs once before any test: the CLI tests check CPU behaviour (bit-exact speculative decoding, the
/// reference outputs), so the CLI's default device is the CPU here even on a machine with a GPU; the
/// GPU tests ask for <c>--device cuda</c> themselves.
/// </summary>
[SetUpFixture]
public sealed class TestSetup
{
    [OneTimeSetUp]
    public void DefaultDeviceIsTheCpu()
    {
        if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable("ENGINE_DEVICE")))
            Environment.SetEnvironmentVariable("ENGINE_DEVICE", "cpu");
    }
}
