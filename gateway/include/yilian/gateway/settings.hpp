// Every setting of `yilian serve`, declared once: name, default, environment variable and
// description. The table drives parsing (flags, then environment, then default) and --help.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace yilian::gateway {

struct settings {
  std::string listen_host = "127.0.0.1";
  std::uint16_t listen_port = 8080;
  std::string data_dir = "./var";
  std::string database_url;        // empty = embedded PostgreSQL under data_dir
  std::string base_url;            // public base of the FHIR API; empty = http://<Host>/fhir
  unsigned workers = 8;            // database worker threads (= connections)
  unsigned io_threads = 1;
  std::size_t body_limit = 64 * 1024 * 1024;
  std::size_t max_bundle_entries = 20000;
  bool mllp_enabled = false;        // HL7 v2 over MLLP
  std::string mllp_host = "127.0.0.1";
  std::uint16_t mllp_port = 2575;
  std::size_t mllp_max_message = 16 * 1024 * 1024;
  std::string mllp_tls_cert;
  std::string mllp_tls_key;
  std::string hl7v2_default_charset;  // for messages without MSH-18 ("" = UTF-8)
  std::vector<std::pair<std::string, std::string>> hl7v2_authorities;  // assigning authority -> system
  std::chrono::milliseconds read_timeout{30'000};
  std::chrono::milliseconds idle_timeout{60'000};
  std::vector<std::string> load;   // FHIR files or folders to load (PUT by id) before listening
  bool access_log = true;
  std::size_t export_file_limit = 64 * 1024 * 1024;  // bulk export: largest NDJSON file before a split
  std::chrono::seconds export_expiry{3600};         // bulk export: jobs and files deleted after
};

struct setting_descriptor {
  std::string_view flag;         // "--listen"
  std::string_view env;          // "YILIAN_LISTEN"
  std::string_view default_text; // as shown in --help
  std::string_view description;
};

const std::vector<setting_descriptor>& setting_table();

// Parses `args` (after the subcommand) and the environment. Throws std::invalid_argument with a
// message naming the flag on a bad value or an unknown flag. Sets `help` when --help is given.
settings parse_settings(const std::vector<std::string>& args, bool& help);

std::string settings_help();

}  // namespace yilian::gateway
