#pragma once
// The dispatchd process once its command line is accepted: logging set up, the state directory
// locked and read back, the TLS files loaded, then the server run on one io_context thread with
// SIGINT/SIGTERM (graceful stop), SIGHUP (certificate reload off the io thread) and the periodic
// state write, and finally the state written after the io thread has stopped.

#include "dispatchd/app/options.hpp"

namespace dispatchd::app {

// Returns the process's exit status: 0 after a graceful stop, 1 when the server could not
// listen, failed or its state was not saved, 2 when the state directory or the TLS files are
// refused at start (the message printed as "dispatchd: ..." on stderr).
int run_daemon(DaemonOptions options);

}  // namespace dispatchd::app
