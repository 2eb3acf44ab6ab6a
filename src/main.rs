//! The `recast` command line. All the work is in the library; [`cli`] parses arguments,
//! calls it, prints, and picks the exit code.

mod cli;

use clap::Parser;

// sled allocates and frees a node copy per insert, from more than one thread; under glibc's
// malloc that was a quarter of a migration into sled (perf). jemalloc cut the migration's time
// by a fifth with the same peak RSS; mimalloc was as fast but tripled peak RSS.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Commands run on a blocking thread: the PostgreSQL client blocks, and long runs block on
    // their own threads; the runtime's workers stay free for Ctrl-C and spawned tasks.
    let outcome = runtime.block_on(async {
        tokio::task::spawn_blocking(move || futures::executor::block_on(cli::run(args)))
            .await
            .unwrap_or_else(|panic| Err(cli::Failure::Usage(format!("internal error: {panic}"))))
    });
    cli::exit_code(outcome)
}
