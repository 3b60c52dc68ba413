#pragma once
// Test certificates, made once per test process with scripts/gen-certs.sh (the same script the
// README's quick start uses), and the file reading the TLS tests need.

#include <string>

namespace dispatchd::test {

// Runs gen-certs.sh with `args` (its own flags: --nodes, --org, --test-variants, ...) into a
// temporary directory named after `tag` and this process, and returns that directory. Throws if
// the script fails.
std::string make_test_certs(const std::string& tag, const std::string& args);

// A whole file's bytes ("" if it cannot be read).
std::string read_file(const std::string& path);

}  // namespace dispatchd::test
