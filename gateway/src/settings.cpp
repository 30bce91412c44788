#include "yilian/gateway/settings.hpp"

#include <charconv>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <stdexcept>

namespace yilian::gateway {
namespace {

struct setting_entry {
  setting_descriptor descriptor;
  std::function<void(settings&, const std::string&)> apply;
};

unsigned long long parse_number(std::string_view flag, const std::string& text, unsigned long long max) {
  unsigned long long v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc{} || p != text.data() + text.size() || v > max)
    throw std::invalid_argument(std::string(flag) + ": expected a number up to " + std::to_string(max) + ", got '" +
                                text + "'");
  return v;
}

std::size_t parse_size(std::string_view flag, std::string text) {
  unsigned long long factor = 1;
  if (!text.empty()) {
    char suffix = static_cast<char>(std::toupper(static_cast<unsigned char>(text.back())));
    if (suffix == 'K') factor = 1024;
    if (suffix == 'M') factor = 1024 * 1024;
    if (suffix == 'G') factor = 1024ull * 1024 * 1024;
    if (factor != 1) text.pop_back();
  }
  return static_cast<std::size_t>(parse_number(flag, text, 1ull << 40) * factor);
}

void parse_listen(settings& s, const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0)
    throw std::invalid_argument("--listen: expected HOST:PORT, got '" + text + "'");
  s.listen_host = text.substr(0, colon);
  if (s.listen_host.size() > 2 && s.listen_host.front() == '[' && s.listen_host.back() == ']')
    s.listen_host = s.listen_host.substr(1, s.listen_host.size() - 2);
  s.listen_port = static_cast<std::uint16_t>(parse_number("--listen", text.substr(colon + 1), 65535));
}

const std::vector<setting_entry>& entries() {
  static const std::vector<setting_entry> table = {
      {{"--config", "YILIAN_CONFIG", "(none)",
        "Settings file: `name = value` lines (names as these flags without --); the environment and flags override it"},
       [](settings&, const std::string&) {}},  // read first, by parse_settings
      {{"--listen", "YILIAN_LISTEN", "127.0.0.1:8080", "Address and port of the HTTP server"}, parse_listen},
      {{"--data-dir", "YILIAN_DATA_DIR", "./var", "Data directory (embedded PostgreSQL cluster, exports, dead letters)"},
       [](settings& s, const std::string& v) { s.data_dir = v; }},
      {{"--database-url", "YILIAN_DATABASE_URL", "(none)",
        "PostgreSQL URL of an external server; without it Yilian runs its own PostgreSQL under the data directory"},
       [](settings& s, const std::string& v) { s.database_url = v; }},
      {{"--base-url", "YILIAN_BASE_URL", "(from Host header)", "Public base URL of the FHIR API, used in links and Location"},
       [](settings& s, const std::string& v) {
         s.base_url = v;
         while (!s.base_url.empty() && s.base_url.back() == '/') s.base_url.pop_back();
       }},
      {{"--workers", "YILIAN_WORKERS", "8", "Database worker threads (one PostgreSQL connection each)"},
       [](settings& s, const std::string& v) {
         s.workers = static_cast<unsigned>(parse_number("--workers", v, 1024));
         if (s.workers == 0) throw std::invalid_argument("--workers: must be at least 1");
       }},
      {{"--io-threads", "YILIAN_IO_THREADS", "1", "HTTP I/O threads"},
       [](settings& s, const std::string& v) {
         s.io_threads = static_cast<unsigned>(parse_number("--io-threads", v, 256));
         if (s.io_threads == 0) throw std::invalid_argument("--io-threads: must be at least 1");
       }},
      {{"--body-limit", "YILIAN_BODY_LIMIT", "64M", "Largest accepted request body (K, M, G suffixes); larger gets 413"},
       [](settings& s, const std::string& v) { s.body_limit = parse_size("--body-limit", v); }},
      {{"--max-bundle-entries", "YILIAN_MAX_BUNDLE_ENTRIES", "20000",
        "Most entries a transaction or batch Bundle may have; more gets 413"},
       [](settings& s, const std::string& v) {
         s.max_bundle_entries = static_cast<std::size_t>(parse_number("--max-bundle-entries", v, 10'000'000));
         if (s.max_bundle_entries == 0) throw std::invalid_argument("--max-bundle-entries: must be at least 1");
       }},
      {{"--read-timeout", "YILIAN_READ_TIMEOUT_MS", "30000", "Milliseconds allowed to receive a whole request"},
       [](settings& s, const std::string& v) {
         s.read_timeout = std::chrono::milliseconds(parse_number("--read-timeout", v, 86'400'000));
       }},
      {{"--idle-timeout", "YILIAN_IDLE_TIMEOUT_MS", "60000", "Milliseconds a keep-alive connection may stay idle"},
       [](settings& s, const std::string& v) {
         s.idle_timeout = std::chrono::milliseconds(parse_number("--idle-timeout", v, 86'400'000));
       }},
      {{"--load", "YILIAN_LOAD", "(none)",
        "FHIR JSON/XML file, Bundle or folder to store (PUT by id) before serving; repeatable (env: comma-separated)"},
       [](settings& s, const std::string& v) {
         std::stringstream in(v);
         for (std::string item; std::getline(in, item, ',');)
           if (!item.empty()) s.load.push_back(item);
       }},
      {{"--access-log", "YILIAN_ACCESS_LOG", "on", "One line per request on standard output (on/off)"},
       [](settings& s, const std::string& v) {
         if (v == "on" || v == "true" || v == "1") s.access_log = true;
         else if (v == "off" || v == "false" || v == "0") s.access_log = false;
         else throw std::invalid_argument("--access-log: expected on or off, got '" + v + "'");
       }},
      {{"--mllp-listen", "YILIAN_MLLP_LISTEN", "off",
        "HL7 v2 over MLLP: HOST:PORT to accept HIS/LIS connections on (e.g. 0.0.0.0:2575), or off"},
       [](settings& s, const std::string& v) {
         if (v == "off" || v.empty()) {
           s.mllp_enabled = false;
           return;
         }
         settings parsed;
         parse_listen(parsed, v);
         s.mllp_host = parsed.listen_host;
         s.mllp_port = parsed.listen_port;
         s.mllp_enabled = true;
       }},
      {{"--mllp-max-message", "YILIAN_MLLP_MAX_MESSAGE", "16M",
        "HL7 v2: largest message (K, M, G suffixes); larger is answered AR"},
       [](settings& s, const std::string& v) { s.mllp_max_message = parse_size("--mllp-max-message", v); }},
      {{"--mllp-tls-cert", "YILIAN_MLLP_TLS_CERT", "(none)", "HL7 v2: PEM certificate (chain) for MLLP over TLS"},
       [](settings& s, const std::string& v) { s.mllp_tls_cert = v; }},
      {{"--mllp-tls-key", "YILIAN_MLLP_TLS_KEY", "(none)", "HL7 v2: PEM private key for MLLP over TLS"},
       [](settings& s, const std::string& v) { s.mllp_tls_key = v; }},
      {{"--hl7v2-charset", "YILIAN_HL7V2_CHARSET", "UTF-8",
        "HL7 v2: character set of messages whose MSH-18 is empty (e.g. GB18030 for many Chinese HIS)"},
       [](settings& s, const std::string& v) { s.hl7v2_default_charset = v == "UTF-8" ? std::string() : v; }},
      {{"--hl7v2-authority", "YILIAN_HL7V2_AUTHORITY", "(none)",
        "HL7 v2: AUTHORITY=SYSTEM maps an assigning authority (CX-4, or AUTHORITY^TYPE) to an Identifier.system; "
        "repeatable (env: comma-separated)"},
       [](settings& s, const std::string& v) {
         std::stringstream in(v);
         for (std::string item; std::getline(in, item, ',');) {
           auto eq = item.find('=');
           if (eq == std::string::npos || eq == 0 || eq + 1 == item.size())
             throw std::invalid_argument("--hl7v2-authority: expected AUTHORITY=SYSTEM, got '" + item + "'");
           s.hl7v2_authorities.emplace_back(item.substr(0, eq), item.substr(eq + 1));
         }
       }},
      {{"--export-file-limit", "YILIAN_EXPORT_FILE_LIMIT", "64M",
        "Bulk $export: largest NDJSON file (K, M, G suffixes); a type with more data gets several files"},
       [](settings& s, const std::string& v) {
         s.export_file_limit = parse_size("--export-file-limit", v);
         if (s.export_file_limit == 0) throw std::invalid_argument("--export-file-limit: must be more than 0");
       }},
      {{"--export-expiry", "YILIAN_EXPORT_EXPIRY_S", "3600", "Bulk $export: seconds a finished job and its files are kept"},
       [](settings& s, const std::string& v) {
         s.export_expiry = std::chrono::seconds(parse_number("--export-expiry", v, 365ull * 86'400));
       }},
  };
  return table;
}

}  // namespace

const std::vector<setting_descriptor>& setting_table() {
  static const std::vector<setting_descriptor> table = [] {
    std::vector<setting_descriptor> out;
    for (const auto& e : entries()) out.push_back(e.descriptor);
    return out;
  }();
  return table;
}

// A settings file hospital IT can read and edit: `name = value` lines, names as the flags without
// the leading dashes, `#` comments, repeatable names repeated.
void apply_config_file(settings& s, const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::invalid_argument("--config: cannot read " + path);
  int line_number = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    if (auto hash = line.find('#'); hash != std::string::npos) line.erase(hash);
    auto trim = [](std::string t) {
      auto b = t.find_first_not_of(" \t\r");
      auto e = t.find_last_not_of(" \t\r");
      return b == std::string::npos ? std::string() : t.substr(b, e - b + 1);
    };
    line = trim(line);
    if (line.empty()) continue;
    auto eq = line.find('=');
    if (eq == std::string::npos)
      throw std::invalid_argument(path + ":" + std::to_string(line_number) + ": expected name = value");
    std::string flag = "--" + trim(line.substr(0, eq));
    std::string value = trim(line.substr(eq + 1));
    const setting_entry* found = nullptr;
    for (const auto& e : entries())
      if (e.descriptor.flag == flag) found = &e;
    if (!found || flag == "--config")
      throw std::invalid_argument(path + ":" + std::to_string(line_number) + ": unknown setting '" + flag.substr(2) + "'");
    try {
      found->apply(s, value);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(path + ":" + std::to_string(line_number) + ": " + e.what());
    }
  }
}

settings parse_settings(const std::vector<std::string>& args, bool& help) {
  settings s;
  help = false;
  // The settings file first, then the environment, then flags.
  std::string config;
  if (const char* v = std::getenv("YILIAN_CONFIG"); v && *v) config = v;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--config" && i + 1 < args.size()) config = args[i + 1];
    else if (args[i].starts_with("--config=")) config = args[i].substr(9);
  }
  if (!config.empty()) apply_config_file(s, config);
  for (const auto& e : entries())
    if (const char* v = std::getenv(std::string(e.descriptor.env).c_str()); v && *v) e.apply(s, v);
  bool load_from_flags = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      help = true;
      continue;
    }
    std::string flag = arg, val;
    bool has_value = false;
    if (auto eq = arg.find('='); eq != std::string::npos && arg.starts_with("--")) {
      flag = arg.substr(0, eq);
      val = arg.substr(eq + 1);
      has_value = true;
    }
    const setting_entry* found = nullptr;
    for (const auto& e : entries())
      if (e.descriptor.flag == flag) found = &e;
    if (!found) throw std::invalid_argument("unknown option '" + arg + "' (see yilian serve --help)");
    if (!has_value) {
      if (i + 1 >= args.size()) throw std::invalid_argument(flag + ": missing value");
      val = args[++i];
    }
    if (flag == "--load" && !load_from_flags) {
      s.load.clear();  // flags replace the environment's list
      load_from_flags = true;
    }
    found->apply(s, val);
  }
  return s;
}

std::string settings_help() {
  std::ostringstream out;
  out << "Usage: yilian serve [options]\n\nOptions (each also an environment variable):\n";
  for (const auto& d : setting_table()) {
    out << "  " << d.flag;
    for (std::size_t n = d.flag.size(); n < 16; ++n) out << ' ';
    out << d.description << "\n" << std::string(18, ' ') << "env " << d.env << ", default " << d.default_text << "\n";
  }
  return out.str();
}

}  // namespace yilian::gateway
