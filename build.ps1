#!/usr/bin/env pwsh
<#
.SYNOPSIS
  Builds and tests Engine.  Run through the PowerShell dotnet tool:

    dotnet tool restore
    dotnet pwsh build.ps1 [target] [-Configuration Release] [-Filter EXPR]

.DESCRIPTION
  Targets:
    build        compile the kernels (kernels/*.cu to PTX when nvcc is found, kernels/cpu/*.c to the native
                 CPU library when a C compiler is found) and build Engine.sln
    test         build, run the NUnit tests, and print "N passed, N failed" from the TRX report
    ptx          compile the kernels only (cmake -S . -B build): PTX and the native CPU library
    pack-device  publish the self-contained test binary for a GPU machine into .device/ (tools/device/pack.sh)
    clean        remove build outputs

  nvcc is looked up in $env:CUDACXX, on PATH, in /usr/local/cuda and /opt/nvcc-11.8. Under CI
  ($env:CI = true) a missing nvcc or C compiler, or a kernel that does not compile, is an error;
  elsewhere the build goes on without PTX (GPU tests are skipped) or without the native CPU library
  (the C# kernels run).
#>
param(
    [Parameter(Position = 0)]
    [ValidateSet('build', 'test', 'ptx', 'pack-device', 'clean')]
    [string] $Target = 'build',
    [string] $Configuration = 'Release',
    [string] $Filter = '',
    [string] $Results = 'TestResults'
)

$ErrorActionPreference = 'Stop'
$PSNativeCommandUseErrorActionPreference = $true
Set-Location $PSScriptRoot
$env:DOTNET_CLI_TELEMETRY_OPTOUT = '1'
$env:TESTINGPLATFORM_TELEMETRY_OPTOUT = '1'
$env:DOTNET_NOLOGO = '1'
$ci = $env:CI -eq 'true'
if ($ci) { $PSStyle.OutputRendering = 'PlainText' }

function Find-Nvcc {
    $candidates = @($env:CUDACXX, (Get-Command nvcc -ErrorAction SilentlyContinue)?.Source, '/usr/local/cuda/bin/nvcc', '/opt/nvcc-11.8/bin/nvcc')
    foreach ($c in $candidates) {
        if ($c -and (Test-Path $c -PathType Leaf)) { return (Resolve-Path $c).Path }
    }
    return $null
}

function Invoke-Ptx {
    if (-not (Get-Command cmake -ErrorAction SilentlyContinue)) {
        if ($ci) { throw 'cmake not found: CI must compile every kernel' }
        Write-Warning 'cmake not found: building without PTX and without the native CPU kernels'
        return
    }
    $arguments = @('-S', '.', '-B', 'build')
    $nvcc = Find-Nvcc
    if ($nvcc) {
        Write-Host "PTX: compiling kernels/*.cu with $nvcc"
        $arguments += @("-DENGINE_NVCC=$nvcc", '-DENGINE_REQUIRE_NVCC=ON')
    }
    elseif ($ci) { throw 'nvcc not found: CI must compile every kernel (install it with ../shared/tools/install-cuda-compiler.sh or set CUDACXX)' }
    else { Write-Warning 'nvcc not found: building without PTX (the CPU backend does not need it; GPU tests will be skipped)' }
    if ($ci) { $arguments += '-DENGINE_REQUIRE_CPU_NATIVE=ON' }
    cmake @arguments
    cmake --build build
}

function Invoke-Build {
    Invoke-Ptx
    dotnet build Engine.sln -c $Configuration
}

function Invoke-Test {
    try {
        Invoke-Build
    }
    catch {
        Write-Host "build failed: $_"
        Write-Host '0 passed, 1 failed'
        exit 1
    }
    $resultsDir = Join-Path $PSScriptRoot $Results
    if (Test-Path $resultsDir) { Remove-Item -Recurse -Force $resultsDir }
    $arguments = @('test', '--solution', 'Engine.sln', '-c', $Configuration, '--no-build', '--report-trx', '--results-directory', $resultsDir)
    if ($Filter) { $arguments += @('--filter', $Filter) }
    # Exit code 2 means failed tests; the TRX summary below reports them, so keep going to print it.
    $PSNativeCommandUseErrorActionPreference = $false
    & dotnet @arguments
    $code = $LASTEXITCODE
    $PSNativeCommandUseErrorActionPreference = $true

    $passed = 0; $failed = 0
    $trx = @(Get-ChildItem -Path $resultsDir -Filter *.trx -Recurse -ErrorAction SilentlyContinue)
    foreach ($file in $trx) {
        $counters = ([xml](Get-Content -Raw $file.FullName)).TestRun.ResultSummary.Counters
        $passed += [int]$counters.passed
        $failed += [int]$counters.failed + [int]$counters.error + [int]$counters.timeout + [int]$counters.aborted
    }
    if ($trx.Count -eq 0 -or ($code -ne 0 -and $failed -eq 0)) { $failed += 1 } # the run itself failed
    Write-Host "$passed passed, $failed failed"
    if ($failed -gt 0) { exit 1 }
}

switch ($Target) {
    'build' { Invoke-Build }
    'test' { Invoke-Test }
    'ptx' { Invoke-Ptx }
    'pack-device' { Invoke-Ptx; bash tools/device/pack.sh }
    'clean' {
        foreach ($d in @('build', $Results, '.device')) { if (Test-Path $d) { Remove-Item -Recurse -Force $d } }
        dotnet clean Engine.sln -c $Configuration
    }
}
