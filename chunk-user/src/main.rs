//! The `chunk` command line: parses arguments and hands over to [`chunk::cmd`].

use chunk::cmd;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chunk",
    version,
    about = "Reliable file transfer over a custom IP protocol (IPv4, IPv6, or in UDP), received through XDP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Receive files: attach to an interface and write what senders send into a directory.
    Recv(cmd::recv::RecvArgs),
    /// Send files to a host running `chunk recv`; succeeds only when every file's hash was
    /// confirmed by the receiver.
    Send(cmd::send::SendArgs),
    /// Attach the XDP program to an interface, take valid chunk packets from the kernel, and
    /// print the kernel's counters on exit (Ctrl-C, SIGTERM, or --duration).
    Listen(cmd::listen::ListenArgs),
    /// Write a new key pair for encrypted transfers (the private key mode 0600, the public key
    /// beside it as FILE.pub).
    Keygen(cmd::keygen::KeygenArgs),
    /// Show a running receiver's counters (kernel and userspace), rates and limits.
    Stats(cmd::stats::StatsArgs),
    /// Send test chunk packets (valid and, on request, corrupt) to a host, to check the receive
    /// path.
    Probe(cmd::probe::ProbeArgs),
    /// Measure how fast this machine seals packets with AES-256-GCM and ChaCha20-Poly1305.
    #[command(hide = true)]
    AeadCost(cmd::aead_cost::AeadCostArgs),
    /// Measure the XDP program's cost per packet in the kernel (BPF_PROG_TEST_RUN).
    #[command(hide = true)]
    XdpCost(cmd::xdp_cost::XdpCostArgs),
    /// Run one transfer on the protocol core's simulated network and print its figures as JSON
    /// (for the benchmark, next to the real link's).
    #[command(hide = true)]
    Sim(cmd::sim::SimArgs),
}

/// Errors reach the user as one message with its causes (`chunk: opening …: reason`), never as a
/// `Debug` dump: anyhow's `Debug` would print a stack trace whenever `RUST_BACKTRACE` is set.
fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match Cli::parse().command {
        Command::Recv(a) => cmd::recv::run(a),
        Command::Send(a) => cmd::send::run(a),
        Command::Listen(a) => cmd::listen::run(a),
        Command::Probe(a) => cmd::probe::run(a),
        Command::XdpCost(a) => cmd::xdp_cost::run(a),
        Command::Sim(a) => cmd::sim::run(a),
        Command::Stats(a) => cmd::stats::run(a),
        Command::Keygen(a) => cmd::keygen::run(a),
        Command::AeadCost(a) => cmd::aead_cost::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chunk: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
