// FHIR XML <-> value tree (https://hl7.org/fhir/R4/xml.html), driven by the definitions.
//
// Parsing uses a hardened Xerces SAX2 reader (no DTD, no external entities, no schema, no network,
// depth limit) and builds the JSON-shaped tree: primitives become `name` (+ `_name` for id and
// extensions, arrays aligned with nulls), Resource-typed elements unwrap their inner resource, and
// Narrative.div becomes the div's outer XML as a string. Writing walks the tree in definition order.
#include "yilian/fhir/xml.hpp"

#include <algorithm>
#include <cctype>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>
#include <xercesc/framework/MemBufInputSource.hpp>
#include <xercesc/sax/EntityResolver.hpp>
#include <xercesc/sax/ErrorHandler.hpp>
#include <xercesc/sax/InputSource.hpp>
#include <xercesc/sax/SAXParseException.hpp>
#include <xercesc/sax2/Attributes.hpp>
#include <xercesc/sax2/ContentHandler.hpp>
#include <xercesc/sax2/DefaultHandler.hpp>
#include <xercesc/sax2/SAX2XMLReader.hpp>
#include <xercesc/sax2/XMLReaderFactory.hpp>
#include <xercesc/util/OutOfMemoryException.hpp>
#include <xercesc/util/PlatformUtils.hpp>
#include <xercesc/util/SecurityManager.hpp>
#include <xercesc/util/XMLException.hpp>
#include <xercesc/util/XMLUni.hpp>

#include "yilian/fhir/json.hpp"

namespace yilian::fhir {
namespace {

namespace xc = XERCES_CPP_NAMESPACE;

constexpr std::string_view fhir_ns = "http://hl7.org/fhir";
constexpr std::string_view xhtml_ns = "http://www.w3.org/1999/xhtml";
constexpr std::size_t max_depth = 256;

void init_xerces() {
  static std::once_flag once;
  std::call_once(once, [] { xc::XMLPlatformUtils::Initialize(); });
}

// ---------------------------------------------------------------------------------------------
// Small helpers

void append_utf8(std::string& out, const XMLCh* s, std::size_t n) {
  // At most 3 bytes per UTF-16 unit (a surrogate pair, 2 units, becomes 4 bytes).
  const std::size_t old = out.size();
  out.resize(old + n * 3);
  char* p = out.data() + old;
  for (std::size_t i = 0; i < n; ++i) {
    char32_t c = s[i];
    if (c < 0x80) {
      *p++ = static_cast<char>(c);
      continue;
    }
    if (c >= 0xD800 && c <= 0xDBFF && i + 1 < n && s[i + 1] >= 0xDC00 && s[i + 1] <= 0xDFFF) {
      c = 0x10000 + ((c - 0xD800) << 10) + (s[i + 1] - 0xDC00);
      ++i;
    }
    if (c < 0x800) {
      *p++ = static_cast<char>(0xC0 | (c >> 6));
      *p++ = static_cast<char>(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
      *p++ = static_cast<char>(0xE0 | (c >> 12));
      *p++ = static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      *p++ = static_cast<char>(0x80 | (c & 0x3F));
    } else {
      *p++ = static_cast<char>(0xF0 | (c >> 18));
      *p++ = static_cast<char>(0x80 | ((c >> 12) & 0x3F));
      *p++ = static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      *p++ = static_cast<char>(0x80 | (c & 0x3F));
    }
  }
  out.resize(static_cast<std::size_t>(p - out.data()));
}

std::string utf8(const XMLCh* s) {
  std::string out;
  if (s) append_utf8(out, s, xc::XMLString::stringLen(s));
  return out;
}

bool equals(const XMLCh* s, std::string_view ascii) {
  if (!s) return ascii.empty();
  std::size_t i = 0;
  for (; s[i] != 0; ++i)
    if (i >= ascii.size() || s[i] != static_cast<unsigned char>(ascii[i])) return false;
  return i == ascii.size();
}

// JSON number grammar (what RawValue will write verbatim).
bool is_json_number(std::string_view s) {
  std::size_t i = 0, n = s.size();
  if (i < n && s[i] == '-') ++i;
  if (i >= n) return false;
  if (s[i] == '0') {
    ++i;
  } else if (s[i] >= '1' && s[i] <= '9') {
    while (i < n && s[i] >= '0' && s[i] <= '9') ++i;
  } else {
    return false;
  }
  if (i < n && s[i] == '.') {
    ++i;
    std::size_t start = i;
    while (i < n && s[i] >= '0' && s[i] <= '9') ++i;
    if (i == start) return false;
  }
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < n && (s[i] == '+' || s[i] == '-')) ++i;
    std::size_t start = i;
    while (i < n && s[i] >= '0' && s[i] <= '9') ++i;
    if (i == start) return false;
  }
  return i == n;
}

// The document is UTF-8 (no BOM for another encoding, no other encoding declared), so byte ranges
// of the input are UTF-8 text.
bool is_utf8_document(std::string_view text) {
  if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);
  if (text.empty() || static_cast<unsigned char>(text[0]) >= 0x80 || text[0] == '\0') return false;
  if (!text.starts_with("<?xml")) return true;
  std::string_view decl = text.substr(0, text.find("?>"));
  auto pos = decl.find("encoding");
  if (pos == std::string_view::npos) return true;
  decl.remove_prefix(pos + 8);
  auto q = decl.find_first_of("\"'");
  if (q == std::string_view::npos) return false;
  decl.remove_prefix(q + 1);
  std::string enc(decl.substr(0, decl.find_first_of("\"'")));
  for (char& c : enc) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return enc == "utf-8" || enc == "utf8";
}

// Escapes XML character data; in attribute values also quotes and whitespace that attribute
// normalisation would otherwise turn into spaces.
void escape_xml(std::string& out, std::string_view s, bool attribute) {
  std::size_t start = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char* rep = nullptr;
    switch (s[i]) {
      case '&': rep = "&amp;"; break;
      case '<': rep = "&lt;"; break;
      case '>': rep = "&gt;"; break;
      case '\r': rep = "&#xD;"; break;
      case '"': rep = attribute ? "&quot;" : nullptr; break;
      case '\n': rep = attribute ? "&#xA;" : nullptr; break;
      case '\t': rep = attribute ? "&#x9;" : nullptr; break;
      default: break;
    }
    if (!rep) continue;
    out.append(s, start, i - start);
    out += rep;
    start = i + 1;
  }
  out.append(s, start, s.size() - start);
}

void escape_attr(std::string& out, std::string_view s) { escape_xml(out, s, true); }

// XML 1.0 section 2.11: a parser hands on CR LF and lone CR as LF. A narrative copied byte for
// byte must do the same, or the same document would read differently from CRLF files; a CR
// written as a character reference (as write_xml does) is a real CR.
std::string normalise_line_ends(std::string_view raw) {
  std::string out;
  out.reserve(raw.size());
  for (std::size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < raw.size() && raw[i + 1] == '\n') ++i;
    } else if (raw[i] == '&' && (raw.substr(i, 5) == "&#xD;" || raw.substr(i, 5) == "&#xd;")) {
      out.push_back('\r');
      i += 4;
    } else if (raw[i] == '&' && raw.substr(i, 5) == "&#13;") {
      out.push_back('\r');
      i += 4;
    } else {
      out.push_back(raw[i]);
    }
  }
  return out;
}
void escape_text(std::string& out, std::string_view s) { escape_xml(out, s, false); }

// How an element's content is represented.
enum class content { primitive, complex, resource, xhtml };

struct resolved {
  content kind = content::complex;
  const element_def* children = nullptr;  // whose `children` list the element's members
  const type_def* primitive = nullptr;
};

// `elem` found by find_child with `chosen` type code.
bool resolve(const definitions& defs, const element_def& elem, const std::string& chosen, resolved& r) {
  if (elem.xhtml) {
    r.kind = content::xhtml;
    return true;
  }
  if (!chosen.empty()) {
    if (chosen == "Resource") {
      r.kind = content::resource;
      return true;
    }
    const type_def* t = defs.find_type(chosen);
    if (!t) return false;
    if (t->kind == type_kind::primitive_type) {
      r.kind = content::primitive;
      r.primitive = t;
      r.children = &t->root;
      return true;
    }
    if (t->kind == type_kind::resource) {
      r.kind = content::resource;
      return true;
    }
    r.kind = content::complex;
    r.children = elem.is_choice() ? &t->root : &elem;
    return true;
  }
  if (elem.is_choice()) return false;
  r.kind = content::complex;  // contentReference or BackboneElement
  r.children = &elem;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Parsing

struct stop_parse {};

struct frame {
  content kind = content::complex;
  const element_def* elem = nullptr;      // the element in its parent (null for a resource root)
  const element_def* children = nullptr;  // where child names are looked up
  const type_def* primitive = nullptr;
  std::string name;  // JSON name ("valueQuantity")
  std::string path;
  value obj;                  // complex content, the resource, or a primitive's `_name` part
  value prim;                 // a primitive's value
  bool has_resource = false;  // resource container: its resource was seen
};

class handler final : public xc::DefaultHandler {
 public:
  handler(std::string_view text, value& out, issue_list& issues, const definitions& defs)
      : text_(text), raw_ok_(is_utf8_document(text)), out_(out), issues_(issues), defs_(defs) {}

  void set_reader(xc::SAX2XMLReader* reader) { reader_ = reader; }
  bool failed() const noexcept { return failed_; }

  // DOCTYPE is refused outright (no entity expansion, no external subsets).
  void startDTD(const XMLCh* const, const XMLCh* const, const XMLCh* const) override {
    error(issue_type::security, "DOCTYPE declarations are not allowed in FHIR XML", current_path());
    throw stop_parse{};
  }
  xc::InputSource* resolveEntity(const XMLCh* const, const XMLCh* const) override {
    error(issue_type::security, "external entities are not allowed", current_path());
    throw stop_parse{};
  }

  void warning(const xc::SAXParseException&) override {}
  void error(const xc::SAXParseException& e) override { fatalError(e); }
  void fatalError(const xc::SAXParseException& e) override {
    error(issue_type::structure,
          "malformed XML: " + utf8(e.getMessage()) + " (line " + std::to_string(e.getLineNumber()) + ", column " +
              std::to_string(e.getColumnNumber()) + ")",
          current_path());
    throw stop_parse{};
  }

  void startElement(const XMLCh* const uri, const XMLCh* const localname, const XMLCh* const qname,
                    const xc::Attributes& attrs) override {
    if (++depth_ > max_depth) {
      error(issue_type::structure, "XML nested deeper than " + std::to_string(max_depth) + " levels", current_path());
      throw stop_parse{};
    }
    if (xhtml_depth_ > 0) {
      ++xhtml_depth_;
      xhtml_start(uri, localname, qname, attrs);
      return;
    }
    if (skip_depth_ > 0) {
      ++skip_depth_;
      return;
    }
    std::string name = utf8(localname);
    if (!equals(uri, fhir_ns) && !(equals(localname, "div") && !frames_.empty() && frames_.back().children &&
                                   frames_.back().kind == content::complex)) {
      unknown(frames_.empty() ? name : frames_.back().path + "." + name,
              "element <" + name + "> is not in the FHIR namespace (" + utf8(uri) + ")");
      return;
    }
    if (frames_.empty() || frames_.back().kind == content::resource) {
      start_resource(name, attrs);
      return;
    }
    frame& parent = frames_.back();
    if (parent.kind == content::primitive && name != "extension") {
      unknown(parent.path + "." + name, "element <" + name + "> is not allowed in a primitive");
      return;
    }
    std::string chosen;
    const element_def* elem = parent.children ? defs_.find_child(*parent.children, name, &chosen) : nullptr;
    resolved r;
    if (!elem || elem->xml_attribute || !resolve(defs_, *elem, chosen, r) ||
        (r.kind == content::xhtml) != !equals(uri, fhir_ns)) {
      unknown(parent.path + "." + name, "unknown element <" + name + ">");
      return;
    }
    frame f;
    f.kind = r.kind;
    f.elem = elem;
    f.children = r.children;
    f.primitive = r.primitive;
    f.path = parent.path + "." + name;
    if (elem->is_array()) {
      const value* existing = parent.obj.find(name);
      std::size_t index = existing && existing->is_array() ? existing->items().size() : 0;
      if (r.kind == content::primitive && !existing) {
        const value* ext = parent.obj.find("_" + name);
        if (ext && ext->is_array()) index = ext->items().size();
      }
      f.path += "[" + std::to_string(index) + "]";
    }
    f.name = std::move(name);
    if (r.kind == content::xhtml) {
      begin_xhtml(uri, localname, qname, attrs);
      frames_.push_back(std::move(f));
      return;
    }
    f.obj = value::make_object();
    read_attributes(f, attrs);
    frames_.push_back(std::move(f));
  }

  void endElement(const XMLCh* const, const XMLCh* const localname, const XMLCh* const qname) override {
    --depth_;
    if (xhtml_depth_ > 0) {
      xhtml_end(localname, qname);
      if (--xhtml_depth_ > 0) return;
      finish_xhtml();
    } else if (skip_depth_ > 0) {
      --skip_depth_;
      return;
    }
    frame f = std::move(frames_.back());
    frames_.pop_back();
    if (f.elem == nullptr) {  // a resource
      if (frames_.empty()) {
        out_ = std::move(f.obj);
      } else {
        frame& container = frames_.back();
        container.obj = std::move(f.obj);
        container.has_resource = true;
      }
      return;
    }
    attach(frames_.back(), std::move(f));
  }

  void characters(const XMLCh* const chars, const XMLSize_t length) override {
    if (xhtml_depth_ > 0) {
      std::string s;
      append_utf8(s, chars, length);
      flush_open_tag();
      escape_text(xhtml_, s);
      return;
    }
    if (skip_depth_ > 0 || frames_.empty()) return;
    for (XMLSize_t i = 0; i < length; ++i) {
      XMLCh c = chars[i];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
        error(issue_type::structure, "unexpected text content", frames_.back().path);
        return;
      }
    }
  }

 private:
  void error(issue_type type, std::string message, std::string location) {
    failed_ = true;
    issues_.error(type, std::move(message), std::move(location));
  }
  void unknown(std::string path, std::string message) {
    error(issue_type::structure, std::move(message), std::move(path));
    skip_depth_ = 1;
  }
  std::string current_path() const { return frames_.empty() ? std::string() : frames_.back().path; }

  void start_resource(const std::string& name, const xc::Attributes& attrs) {
    const type_def* type = defs_.find_type(name);
    std::string path = frames_.empty() ? name : frames_.back().path + "." + name;
    if (!type || type->kind != type_kind::resource || type->is_abstract) {
      unknown(path, "<" + name + "> is not a FHIR resource type");
      return;
    }
    if (!frames_.empty() && frames_.back().has_resource) {
      unknown(path, "only one resource is allowed in " + frames_.back().path);
      return;
    }
    frame f;
    f.kind = content::complex;
    f.children = &type->root;
    f.path = frames_.empty() ? name : frames_.back().path;
    f.obj = value::make_object();
    f.obj.members().push_back(member{"resourceType", value::make_string(name)});
    read_attributes(f, attrs);
    frames_.push_back(std::move(f));
  }

  void read_attributes(frame& f, const xc::Attributes& attrs) {
    for (XMLSize_t i = 0, n = attrs.getLength(); i < n; ++i) {
      const XMLCh* uri = attrs.getURI(i);
      if (uri && *uri) continue;  // xsi:schemaLocation...
      const XMLCh* qname = attrs.getQName(i);
      if (equals(qname, "xmlns") || xc::XMLString::startsWith(qname, u"xmlns:")) continue;
      std::string name = utf8(attrs.getLocalName(i));
      std::string text = utf8(attrs.getValue(i));
      if (f.kind == content::primitive && name == "value") {
        if (f.primitive->json == json_primitive::number) {
          if (!is_json_number(text)) {
            error(issue_type::value, "\"" + text + "\" is not a valid " + f.primitive->name, f.path);
            continue;
          }
          f.prim = value::make_number(std::move(text));
        } else if (f.primitive->json == json_primitive::boolean) {
          if (text != "true" && text != "false") {
            error(issue_type::value, "\"" + text + "\" is not a valid boolean", f.path);
            continue;
          }
          f.prim = value::make_boolean(text == "true");
        } else {
          f.prim = value::make_string(std::move(text));
        }
        continue;
      }
      std::string chosen;
      const element_def* elem = f.children ? defs_.find_child(*f.children, name, &chosen) : nullptr;
      if (!elem || !elem->xml_attribute) {
        error(issue_type::structure, "unknown attribute " + name, f.path);
        continue;
      }
      f.obj.members().push_back(member{std::move(name), value::make_string(std::move(text))});
    }
  }

  void attach(frame& parent, frame f) {
    value& obj = parent.obj;
    const bool array = f.elem->is_array();
    if (f.kind == content::resource && !f.has_resource) {
      error(issue_type::structure, "<" + f.name + "> must contain a resource", f.path);
      return;
    }
    if (f.kind != content::primitive) {
      value* existing = obj.find(f.name);
      if (array) {
        if (!existing) existing = &obj.set(f.name, value::make_array());
        existing->push_back(std::move(f.obj));
      } else if (existing) {
        error(issue_type::structure, "<" + f.name + "> may appear only once", f.path);
      } else {
        obj.members().push_back(member{std::move(f.name), std::move(f.obj)});
      }
      return;
    }
    const bool has_ext = !f.obj.members().empty();
    const std::string ext_name = "_" + f.name;
    if (!array) {
      if (obj.find(f.name) || obj.find(ext_name)) {
        error(issue_type::structure, "<" + f.name + "> may appear only once", f.path);
        return;
      }
      if (!f.prim.is_null()) obj.members().push_back(member{f.name, std::move(f.prim)});
      if (has_ext) obj.members().push_back(member{ext_name, std::move(f.obj)});
      if (f.prim.is_null() && !has_ext)
        error(issue_type::required, "primitive element has neither a value nor extensions", f.path);
      return;
    }
    if (f.prim.is_null() && !has_ext)
      error(issue_type::required, "primitive element has neither a value nor extensions", f.path);
    value* values = obj.find(f.name);
    if (!values) values = &obj.set(f.name, value::make_array());
    const std::size_t index = values->items().size();
    values->push_back(std::move(f.prim));
    if (has_ext) {
      value* exts = obj.find(ext_name);
      if (!exts) {
        // `_name` right after `name`.
        auto it =
            std::find_if(obj.members().begin(), obj.members().end(), [&](const member& m) { return m.name == f.name; });
        it = obj.members().insert(it + 1, member{ext_name, value::make_array()});
        exts = &it->val;
      }
      while (exts->items().size() < index) exts->push_back(value());
      exts->push_back(std::move(f.obj));
    }
    pending_arrays_ = true;
  }

 public:
  // After the document: pad `_name` arrays to their `name` arrays, and drop a `name` array that
  // holds no value at all (only `_name` is written then, as in the official JSON).
  static void pad_arrays(value& v) {
    if (v.is_array()) {
      for (value& item : v.items()) pad_arrays(item);
      return;
    }
    if (!v.is_object()) return;
    std::vector<std::string> empty_values;
    for (member& m : v.members()) {
      if (m.name.size() > 1 && m.name[0] == '_' && m.val.is_array()) {
        const std::string_view base = std::string_view(m.name).substr(1);
        if (const value* values = v.find(base); values && values->is_array()) {
          while (m.val.items().size() < values->items().size()) m.val.push_back(value());
          if (std::all_of(values->items().begin(), values->items().end(), [](const value& x) { return x.is_null(); }))
            empty_values.emplace_back(base);
        }
      } else {
        pad_arrays(m.val);
      }
    }
    for (const std::string& name : empty_values) v.erase(name);
  }
  bool pending_arrays() const noexcept { return pending_arrays_; }

 private:
  // --- Narrative.div: the div's outer XML, taken byte for byte from a UTF-8 input when it is
  // self-contained (declares the xhtml namespace itself, no prefixes), else re-serialised.
  void begin_xhtml(const XMLCh* uri, const XMLCh* localname, const XMLCh* qname, const xc::Attributes& attrs) {
    xhtml_depth_ = 1;
    xhtml_.clear();
    xhtml_self_contained_ = raw_ok_ && equals(uri, xhtml_ns) && equals(qname, "div");
    bool declares = false;
    for (XMLSize_t i = 0, n = attrs.getLength(); i < n; ++i)
      if (equals(attrs.getQName(i), "xmlns") && equals(attrs.getValue(i), xhtml_ns)) declares = true;
    if (!declares) xhtml_self_contained_ = false;
    if (!equals(uri, xhtml_ns) || !equals(localname, "div")) {
      error(issue_type::structure, "the narrative must be an xhtml <div>", current_path() + ".div");
    }
    if (xhtml_self_contained_) {
      std::size_t end = static_cast<std::size_t>(reader_->getSrcOffset());
      std::size_t lt = end <= text_.size() ? text_.rfind('<', end == 0 ? 0 : end - 1) : std::string_view::npos;
      if (lt == std::string_view::npos || text_.compare(lt, 4, "<div") != 0)
        xhtml_self_contained_ = false;
      else
        xhtml_raw_start_ = lt;
    }
    xhtml_start(uri, localname, qname, attrs, true);
  }

  void xhtml_start(const XMLCh* uri, const XMLCh* localname, const XMLCh* qname, const xc::Attributes& attrs,
                   bool root = false) {
    flush_open_tag();
    if (!equals(uri, xhtml_ns)) {
      error(issue_type::structure, "element " + utf8(qname) + " in the narrative is not xhtml",
            current_path() + ".div");
    }
    if (!equals(qname, "") && xc::XMLString::indexOf(qname, ':') >= 0) xhtml_self_contained_ = false;
    xhtml_ += '<';
    append_utf8(xhtml_, localname, xc::XMLString::stringLen(localname));
    if (root) xhtml_ += " xmlns=\"http://www.w3.org/1999/xhtml\"";
    for (XMLSize_t i = 0, n = attrs.getLength(); i < n; ++i) {
      const XMLCh* q = attrs.getQName(i);
      if (xc::XMLString::startsWith(q, u"xmlns")) {
        if (!equals(q, "xmlns")) xhtml_self_contained_ = false;
        continue;
      }
      if (xc::XMLString::indexOf(q, ':') >= 0 && !xc::XMLString::startsWith(q, u"xml:")) xhtml_self_contained_ = false;
      xhtml_ += ' ';
      xhtml_ += utf8(q);
      xhtml_ += "=\"";
      escape_attr(xhtml_, utf8(attrs.getValue(i)));
      xhtml_ += '"';
    }
    open_tag_ = true;
  }

  void xhtml_end(const XMLCh* localname, const XMLCh*) {
    if (open_tag_) {
      xhtml_ += "/>";
      open_tag_ = false;
      return;
    }
    xhtml_ += "</";
    append_utf8(xhtml_, localname, xc::XMLString::stringLen(localname));
    xhtml_ += '>';
  }

  void flush_open_tag() {
    if (open_tag_) {
      xhtml_ += '>';
      open_tag_ = false;
    }
  }

  void finish_xhtml() {
    frame& f = frames_.back();
    if (xhtml_self_contained_) {
      std::size_t end = static_cast<std::size_t>(reader_->getSrcOffset());
      if (end <= text_.size() && end > xhtml_raw_start_ && text_.substr(0, end).ends_with(">"))
        f.prim = value::make_string(normalise_line_ends(text_.substr(xhtml_raw_start_, end - xhtml_raw_start_)));
    }
    if (f.prim.is_null()) f.prim = value::make_string(std::move(xhtml_));
    f.kind = content::primitive;
    f.obj = value::make_object();
    xhtml_.clear();
  }

  std::string_view text_;
  bool raw_ok_;
  value& out_;
  issue_list& issues_;
  const definitions& defs_;
  xc::SAX2XMLReader* reader_ = nullptr;
  std::vector<frame> frames_;
  std::size_t depth_ = 0;
  std::size_t skip_depth_ = 0;
  std::size_t xhtml_depth_ = 0;
  std::string xhtml_;
  bool open_tag_ = false;
  bool xhtml_self_contained_ = false;
  std::size_t xhtml_raw_start_ = 0;
  bool failed_ = false;
  bool pending_arrays_ = false;
};

std::unique_ptr<xc::SAX2XMLReader> make_reader(handler& h, xc::SecurityManager& security) {
  std::unique_ptr<xc::SAX2XMLReader> reader(xc::XMLReaderFactory::createXMLReader());
  reader->setFeature(xc::XMLUni::fgSAX2CoreNameSpaces, true);
  reader->setFeature(xc::XMLUni::fgSAX2CoreNameSpacePrefixes, true);
  reader->setFeature(xc::XMLUni::fgSAX2CoreValidation, false);
  reader->setFeature(xc::XMLUni::fgXercesDynamic, false);
  reader->setFeature(xc::XMLUni::fgXercesSchema, false);
  reader->setFeature(xc::XMLUni::fgXercesSchemaFullChecking, false);
  reader->setFeature(xc::XMLUni::fgXercesLoadSchema, false);
  reader->setFeature(xc::XMLUni::fgXercesLoadExternalDTD, false);
  reader->setFeature(xc::XMLUni::fgXercesDisableDefaultEntityResolution, true);
  reader->setFeature(xc::XMLUni::fgXercesCacheGrammarFromParse, false);
  reader->setFeature(xc::XMLUni::fgXercesCalculateSrcOfs, true);
  security.setEntityExpansionLimit(0);
  reader->setProperty(xc::XMLUni::fgXercesSecurityManager, &security);
  reader->setContentHandler(&h);
  reader->setErrorHandler(&h);
  reader->setEntityResolver(&h);
  reader->setLexicalHandler(&h);
  h.set_reader(reader.get());
  return reader;
}

// ---------------------------------------------------------------------------------------------
// Writing

// A narrative is copied verbatim after checking that it is one well-formed xhtml div (so a JSON
// string cannot inject elements into the XML output).
class div_checker final : public xc::DefaultHandler {
 public:
  div_checker() = default;
  div_checker& operator=(const div_checker& o) {
    ok = o.ok;
    roots = o.roots;
    depth = o.depth;
    return *this;
  }

  bool ok = true;
  int roots = 0;
  std::size_t depth = 0;
  void startElement(const XMLCh* const uri, const XMLCh* const localname, const XMLCh* const,
                    const xc::Attributes&) override {
    if (depth++ == 0) {
      ++roots;
      if (!equals(uri, xhtml_ns) || !equals(localname, "div")) ok = false;
    } else if (!equals(uri, xhtml_ns)) {
      ok = false;
    }
    if (depth > max_depth) throw stop_parse{};
  }
  void endElement(const XMLCh* const, const XMLCh* const, const XMLCh* const) override { --depth; }
  void startDTD(const XMLCh* const, const XMLCh* const, const XMLCh* const) override { throw stop_parse{}; }
  xc::InputSource* resolveEntity(const XMLCh* const, const XMLCh* const) override { throw stop_parse{}; }
  void error(const xc::SAXParseException&) override { throw stop_parse{}; }
  void fatalError(const xc::SAXParseException&) override { throw stop_parse{}; }
};

// One reader per xml_writer, reused for every narrative of the resource.
class div_validator {
 public:
  div_validator() {
    init_xerces();
    reset();
  }

  bool well_formed(std::string_view text) {
    if (!text.starts_with("<div") || !text.ends_with(">")) return false;
    checker_ = div_checker{};
    xc::MemBufInputSource source(reinterpret_cast<const XMLByte*>(text.data()), text.size(), "narrative", false);
    source.setEncoding(xc::XMLUni::fgUTF8EncodingString);
    try {
      reader_->parse(source);
    } catch (...) {
      reset();  // a fresh reader after an aborted parse
      return false;
    }
    return checker_.ok && checker_.roots == 1;
  }

 private:
  void reset() {
    reader_.reset(xc::XMLReaderFactory::createXMLReader());
    reader_->setFeature(xc::XMLUni::fgSAX2CoreNameSpaces, true);
    reader_->setFeature(xc::XMLUni::fgSAX2CoreValidation, false);
    reader_->setFeature(xc::XMLUni::fgXercesLoadExternalDTD, false);
    reader_->setFeature(xc::XMLUni::fgXercesDisableDefaultEntityResolution, true);
    reader_->setFeature(xc::XMLUni::fgXercesLoadSchema, false);
    security_.setEntityExpansionLimit(0);
    reader_->setProperty(xc::XMLUni::fgXercesSecurityManager, &security_);
    reader_->setContentHandler(&checker_);
    reader_->setErrorHandler(&checker_);
    reader_->setEntityResolver(&checker_);
    reader_->setLexicalHandler(&checker_);
  }

  div_checker checker_;
  xc::SecurityManager security_;
  std::unique_ptr<xc::SAX2XMLReader> reader_;
};

class xml_writer {
 public:
  xml_writer(std::string& out, issue_list& issues, const xml_write_options& options, const definitions& defs)
      : out_(out), issues_(issues), pretty_(options.pretty), defs_(defs) {}

  bool ok() const noexcept { return ok_; }

  void resource(const value& res, std::size_t depth, const std::string& path, bool root) {
    const value* type_name = res.is_object() ? res.find("resourceType") : nullptr;
    const type_def* type = type_name && type_name->is_string() ? defs_.find_type(type_name->text()) : nullptr;
    if (!type || type->kind != type_kind::resource || type->is_abstract) {
      error(issue_type::structure, "not a resource (missing or unknown resourceType)", path);
      return;
    }
    const std::string& name = type->name;
    std::string where = root ? name : path;
    complex(name, res, type->root, depth, where, root ? " xmlns=\"http://hl7.org/fhir\"" : "", true);
  }

 private:
  struct entry {
    std::size_t order;
    const element_def* elem;
    std::string chosen;
    std::string name;  // JSON name without the '_'
    const value* val = nullptr;
    const value* ext = nullptr;
  };

  void error(issue_type type, std::string message, std::string location) {
    ok_ = false;
    issues_.error(type, std::move(message), std::move(location));
  }

  void indent(std::size_t depth) {
    if (pretty_) out_.append(depth * 2, ' ');
  }
  void newline() {
    if (pretty_) out_ += '\n';
  }

  static std::size_t position(const element_def& parent, const element_def* elem) {
    const auto& kids = *parent.children;
    return static_cast<std::size_t>(std::find(kids.begin(), kids.end(), elem) - kids.begin());
  }

  void complex(std::string_view name, const value& obj, const element_def& parent, std::size_t depth,
               const std::string& path, std::string_view extra_attrs, bool is_resource) {
    if (!obj.is_object()) {
      error(issue_type::structure, "expected an object", path);
      return;
    }
    std::vector<entry> entries;
    entries.reserve(obj.members().size());
    for (const member& m : obj.members()) {
      if (is_resource && m.name == "resourceType") continue;
      const bool underscore = m.name.size() > 1 && m.name[0] == '_';
      std::string_view json_name = underscore ? std::string_view(m.name).substr(1) : std::string_view(m.name);
      std::string chosen;
      const element_def* elem = defs_.find_child(parent, json_name, &chosen);
      if (!elem) {
        error(issue_type::structure, "unknown element \"" + m.name + "\"", path + "." + m.name);
        continue;
      }
      auto it = std::find_if(entries.begin(), entries.end(),
                             [&](const entry& e) { return e.elem == elem && e.name == json_name; });
      if (it == entries.end()) {
        entries.push_back(entry{position(parent, elem), elem, std::move(chosen), std::string(json_name)});
        it = entries.end() - 1;
      }
      (underscore ? it->ext : it->val) = &m.val;
    }
    std::stable_sort(entries.begin(), entries.end(), [](const entry& a, const entry& b) { return a.order < b.order; });

    indent(depth);
    out_ += '<';
    out_ += name;
    out_ += extra_attrs;
    bool has_children = false;
    for (const entry& e : entries) {
      if (!e.elem->xml_attribute) {
        has_children = true;
        continue;
      }
      const std::string& n = element_name(e);
      if (!e.val || !e.val->is_string() || e.ext) {
        error(issue_type::structure, "\"" + n + "\" must be a string", path + "." + n);
        continue;
      }
      out_ += ' ';
      out_ += n;
      out_ += "=\"";
      escape_attr(out_, e.val->text());
      out_ += '"';
    }
    if (!has_children) {
      out_ += "/>";
      newline();
      return;
    }
    out_ += '>';
    newline();
    for (const entry& e : entries) {
      if (e.elem->xml_attribute) continue;
      element(e, depth + 1, path);
    }
    indent(depth);
    out_ += "</";
    out_ += name;
    out_ += '>';
    newline();
  }

  static const std::string& element_name(const entry& e) { return e.name; }

  void element(const entry& e, std::size_t depth, const std::string& parent_path) {
    const std::string& name = element_name(e);
    const std::string path = parent_path + "." + name;
    resolved r;
    if (!resolve(defs_, *e.elem, e.chosen, r)) {
      error(issue_type::structure, "cannot resolve the type of \"" + name + "\"", path);
      return;
    }
    if (r.kind != content::primitive && e.ext) {
      error(issue_type::structure, "\"_" + name + "\" is only allowed for primitive elements", path);
    }
    const bool array = e.elem->is_array();
    auto each = [&](auto&& fn) {
      if (array) {
        const value* v = e.val;
        const value* x = e.ext;
        if ((v && !v->is_array()) || (x && !x->is_array())) {
          error(issue_type::structure, "\"" + name + "\" must be an array", path);
          return;
        }
        std::size_t n = std::max(v ? v->items().size() : 0, x ? x->items().size() : 0);
        for (std::size_t i = 0; i < n; ++i) {
          const value* vi = v && i < v->items().size() ? &v->items()[i] : nullptr;
          const value* xi = x && i < x->items().size() ? &x->items()[i] : nullptr;
          fn(vi, xi, path + "[" + std::to_string(i) + "]");
        }
      } else {
        if ((e.val && e.val->is_array()) || (e.ext && e.ext->is_array())) {
          error(issue_type::structure, "\"" + name + "\" must not be an array", path);
          return;
        }
        fn(e.val, e.ext, path);
      }
    };
    switch (r.kind) {
      case content::xhtml:
        each([&](const value* v, const value*, const std::string& p) { xhtml(v, depth, p); });
        break;
      case content::resource:
        each([&](const value* v, const value*, const std::string& p) {
          if (!v) return;
          indent(depth);
          out_ += '<';
          out_ += name;
          out_ += '>';
          newline();
          if (v->is_raw_json()) {
            // A stored resource spliced in as JSON text: parse it to write it in definition order.
            value parsed;
            issue_list parse_issues;
            if (parse_json(v->text(), parsed, parse_issues))
              resource(parsed, depth + 1, p, false);
            else
              error(issue_type::structure, "embedded raw JSON is not valid JSON", p);
          } else {
            resource(*v, depth + 1, p, false);
          }
          indent(depth);
          out_ += "</";
          out_ += name;
          out_ += '>';
          newline();
        });
        break;
      case content::complex:
        each([&](const value* v, const value*, const std::string& p) {
          if (v && !v->is_null()) complex(name, *v, *r.children, depth, p, {}, false);
        });
        break;
      case content::primitive:
        each([&](const value* v, const value* x, const std::string& p) { primitive(name, v, x, r, depth, p); });
        break;
    }
  }

  void primitive(const std::string& name, const value* v, const value* x, const resolved& r, std::size_t depth,
                 const std::string& path) {
    if (v && v->is_null()) v = nullptr;
    if (x && x->is_null()) x = nullptr;
    if (!v && !x) return;
    if (v && !(v->is_string() || v->is_number() || v->is_boolean())) {
      error(issue_type::structure, "\"" + name + "\" must be a primitive value", path);
      return;
    }
    if (x && !x->is_object()) {
      error(issue_type::structure, "\"_" + name + "\" must be an object", path);
      return;
    }
    indent(depth);
    out_ += '<';
    out_ += name;
    const value* ext = nullptr;
    if (x) {
      for (const member& m : x->members()) {
        if (m.name == "id" && m.val.is_string()) {
          out_ += " id=\"";
          escape_attr(out_, m.val.text());
          out_ += '"';
        } else if (m.name == "extension") {
          ext = &m.val;
        } else {
          error(issue_type::structure, "unknown element \"" + m.name + "\"", path + "." + m.name);
        }
      }
    }
    if (v) {
      out_ += " value=\"";
      escape_attr(out_, v->text());
      out_ += '"';
    }
    if (!ext || !ext->is_array() || ext->items().empty()) {
      out_ += "/>";
      newline();
      return;
    }
    out_ += '>';
    newline();
    const element_def* ext_def = defs_.find_child(*r.children, "extension");
    const type_def* ext_type = defs_.find_type("Extension");
    if (ext_def && ext_type) {
      for (std::size_t i = 0; i < ext->items().size(); ++i)
        complex("extension", ext->items()[i], ext_type->root, depth + 1, path + ".extension[" + std::to_string(i) + "]",
                {}, false);
    }
    indent(depth);
    out_ += "</";
    out_ += name;
    out_ += '>';
    newline();
  }

  void xhtml(const value* v, std::size_t depth, const std::string& path);

  std::string& out_;
  issue_list& issues_;
  bool pretty_;
  const definitions& defs_;
  bool ok_ = true;
  std::unique_ptr<div_validator> divs_;
};

void xml_writer::xhtml(const value* v, std::size_t depth, const std::string& path) {
  if (!v || v->is_null()) return;
  if (!divs_) divs_ = std::make_unique<div_validator>();
  if (!v->is_string() || !divs_->well_formed(v->text())) {
    error(issue_type::value, "the narrative is not a well-formed xhtml <div>", path);
    return;
  }
  indent(depth);
  // A literal CR would be read back as LF (XML line-end normalisation): write it as a reference.
  for (char c : v->text()) {
    if (c == '\r')
      out_ += "&#xD;";
    else
      out_.push_back(c);
  }
  newline();
}

}  // namespace

bool parse_xml(std::string_view text, value& out, issue_list& issues, const definitions& defs) {
  init_xerces();
  out = value();
  handler h(text, out, issues, defs);
  xc::SecurityManager security;
  try {
    std::unique_ptr<xc::SAX2XMLReader> reader = make_reader(h, security);
    xc::MemBufInputSource source(reinterpret_cast<const XMLByte*>(text.data()), text.size(), "resource", false);
    reader->parse(source);
  } catch (const stop_parse&) {
  } catch (const xc::OutOfMemoryException&) {
    issues.error(issue_type::too_costly, "XML document too large");
    out = value();
    return false;
  } catch (const xc::XMLException& e) {
    issues.error(issue_type::structure, "malformed XML: " + utf8(e.getMessage()));
    out = value();
    return false;
  } catch (const xc::SAXException& e) {
    issues.error(issue_type::structure, "malformed XML: " + utf8(e.getMessage()));
    out = value();
    return false;
  }
  if (h.failed() || !out.is_object()) {
    if (!h.failed()) issues.error(issue_type::structure, "no FHIR resource in the XML document");
    out = value();
    return false;
  }
  if (h.pending_arrays()) handler::pad_arrays(out);
  return true;
}

bool write_xml(const value& resource, std::string& out, issue_list& issues, const xml_write_options& options,
               const definitions& defs) {
  xml_writer w(out, issues, options, defs);
  if (resource.is_raw_json()) {
    value parsed;
    if (!parse_json(resource.text(), parsed, issues)) return false;
    w.resource(parsed, 0, "", true);
  } else {
    w.resource(resource, 0, "", true);
  }
  return w.ok();
}

}  // namespace yilian::fhir
