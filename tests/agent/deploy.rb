# Runs one CodeDeploy in-place deployment of a bundle zip on this host with
# the real AWS CodeDeploy agent's own classes, as its CommandExecutor does
# when the service hands it the host's commands: the bundle unpacked into
# ROOT/GROUP_ID/DEPLOYMENT_ID/deployment-archive, the agent's Installer for
# Install (the appspec's files: and permissions:, the previous deployment's
# cleanup list first), its HookExecutor for every lifecycle event (runas,
# timeouts, the agent's environment, logs/scripts.log). Only the service's
# part is played here: handing out the commands in order and stopping at the
# first that fails, as CodeDeploy stops a host's deployment.
#
# The agent's source is not part of nonstop: NONSTOP_CODEDEPLOY_AGENT names
# its tree (a clone of github.com/aws/aws-codedeploy-agent; Debian's ruby and
# ruby-logging run it). Run as root, as the agent runs:
#
#   ruby tests/agent/deploy.rb --bundle app.zip --deployment-id d-1 \
#        [--group-id G] [--group-name prod] [--application demo] \
#        [--root /opt/codedeploy-agent/deployment-root] [--forget-cleanup]
#
# It prints one JSON line per command, what the agent reports to the service
# (PutHostCommandComplete): {"command", "status": "Succeeded" | "Failed",
# "diagnostics": {error_code, script_name, message, log}}. Exit 0 when every
# command succeeded, 1 when one failed, 2 for bad arguments.

require 'optparse'
require 'json'
require 'fileutils'

agent = ENV['NONSTOP_CODEDEPLOY_AGENT']
if agent.nil? || agent.empty? || !File.directory?(File.join(agent, 'lib', 'instance_agent'))
  warn 'deploy.rb: NONSTOP_CODEDEPLOY_AGENT must name the CodeDeploy agent\'s source tree ' \
       '(git clone https://github.com/aws/aws-codedeploy-agent)'
  exit 2
end
[File.join(agent, 'lib'),
 File.join(agent, 'vendor', 'gems', 'process_manager-0.0.13', 'lib'),
 File.join(agent, 'vendor', 'gems', 'simple_pid-0.2.1', 'lib')].each { |d| $LOAD_PATH.unshift(d) }

# The agent's own environment has no such variable: its hooks must not see it.
ENV.delete('NONSTOP_CODEDEPLOY_AGENT')

require 'yaml'
require 'core_ext'
require 'process_manager/config'
require 'process_manager/log'
require 'instance_agent/config'
require 'instance_agent/log'
require 'instance_agent/platform'
require 'instance_agent/platform/linux_util'
require 'instance_agent/plugins/codedeploy/hook_executor'
require 'instance_agent/plugins/codedeploy/installer'

options = {
  root: '/opt/codedeploy-agent/deployment-root',
  group_id: 'nonstop-group-id',
  group_name: 'nonstop-group',
  application: 'nonstop-app',
  forget_cleanup: false,
}
begin
  OptionParser.new do |o|
    o.on('--bundle ZIP') { |v| options[:bundle] = v }
    o.on('--deployment-id ID') { |v| options[:deployment_id] = v }
    o.on('--group-id ID') { |v| options[:group_id] = v }
    o.on('--group-name NAME') { |v| options[:group_name] = v }
    o.on('--application NAME') { |v| options[:application] = v }
    o.on('--root DIR') { |v| options[:root] = v }
    o.on('--forget-cleanup') { options[:forget_cleanup] = true }
  end.parse!(ARGV)
rescue OptionParser::ParseError => e
  warn "deploy.rb: #{e.message}"
  exit 2
end
unless options[:bundle] && options[:deployment_id] && ARGV.empty?
  warn 'deploy.rb: --bundle ZIP and --deployment-id ID are required, and nothing else'
  exit 2
end

# The agent's configuration and log, as its daemon sets them up.
InstanceAgent::Config.init
InstanceAgent::Config.config[:root_dir] = options[:root]
log_dir = File.join(File.dirname(options[:root]), 'log')
InstanceAgent::Config.config[:log_dir] = log_dir
FileUtils.mkdir_p(log_dir)
InstanceAgent::Log.init(File.join(log_dir, 'codedeploy-agent.log'))
InstanceAgent::Platform.util = InstanceAgent::LinuxUtil

module NonstopDriver
  CodeDeploy = InstanceAgent::Plugins::CodeDeployPlugin

  # What CommandExecutor computes from the deployment specification.
  class Deployment
    attr_reader :root, :group_id, :id, :group_name, :application

    def initialize(options)
      @root = options[:root]
      @group_id = options[:group_id]
      @id = options[:deployment_id]
      @group_name = options[:group_name]
      @application = options[:application]
    end

    def root_dir
      File.join(root, group_id, id)
    end

    def archive_dir
      File.join(root_dir, 'deployment-archive')
    end

    def instructions_dir
      File.join(root, 'deployment-instructions')
    end

    def last_successful_install_file
      File.join(instructions_dir, "#{group_id}_last_successful_install")
    end

    def most_recent_install_file
      File.join(instructions_dir, "#{group_id}_most_recent_install")
    end

    def cleanup_file
      File.join(instructions_dir, "#{group_id}-cleanup")
    end

    def read_dir_file(path)
      File.exist?(path) ? File.read(path).chomp : nil
    end

    def hook_executor(event)
      CodeDeploy::HookExecutor.new(
        lifecycle_event: event,
        application_name: application,
        deployment_id: id,
        deployment_group_name: group_name,
        deployment_group_id: group_id,
        deployment_creator: 'user',
        deployment_type: 'IN_PLACE',
        deployment_root_dir: root_dir,
        last_successful_deployment_dir: read_dir_file(last_successful_install_file),
        most_recent_deployment_dir: read_dir_file(most_recent_install_file),
        app_spec_path: 'appspec.yml',
        revision_envs: {}
      )
    end
  end

  # The service's order for an in-place deployment (CodeDeploy's default
  # lifecycle), with the agent's own commands in their places.
  COMMANDS = %w[ApplicationStop DownloadBundle BeforeInstall Install
                AfterInstall ApplicationStart ValidateService].freeze

  # DownloadBundle for a local zip, as the agent's "Local File" revision:
  # linked to bundle.tar, unpacked with the agent's unzip into a fresh
  # deployment-archive; then the group's most recent install recorded.
  def self.download_bundle(d, zip)
    FileUtils.mkdir_p(d.root_dir)
    FileUtils.rm_rf(d.archive_dir)
    bundle = File.join(d.root_dir, 'bundle.tar')
    FileUtils.rm_f(bundle)
    File.symlink(File.expand_path(zip), bundle)
    InstanceAgent::Platform.util.extract_zip(bundle, d.archive_dir)
    FileUtils.mkdir_p(d.instructions_dir)
    File.write(d.most_recent_install_file, d.root_dir)
  end

  # Install as CommandExecutor runs it: the Installer with the deployment
  # spec's default file_exists_behavior (DISALLOW) unless the appspec has its
  # own, then the group's last successful install recorded.
  def self.install(d)
    FileUtils.mkdir_p(d.instructions_dir)
    installer = CodeDeploy::Installer.new(
      deployment_instructions_dir: d.instructions_dir,
      deployment_archive_dir: d.archive_dir,
      file_exists_behavior: 'DISALLOW'
    )
    spec_path = File.join(d.archive_dir, 'appspec.yml')
    spec = CodeDeploy::ApplicationSpecification::ApplicationSpecification.parse(File.read(spec_path))
    installer.install(d.group_id, spec)
    File.write(d.last_successful_install_file, d.root_dir)
  end

  # What the agent sends the service for a command (command_poller's
  # gather_diagnostics*): a ScriptError as JSON.
  def self.diagnostics(code, script, message, log = CodeDeploy::ScriptLog.new)
    raise CodeDeploy::ScriptError.new(code, script, log), message
  rescue CodeDeploy::ScriptError => e
    JSON.parse(e.to_json)
  end

  # One line per command: what the agent reports, and (the driver's own
  # addition, for the tests) the hook's script log the agent returned.
  def self.report(command, status, diagnostics, script_log = nil)
    line = { 'command' => command, 'status' => status, 'diagnostics' => diagnostics }
    line['script_log'] = script_log.join unless script_log.nil?
    puts(line.to_json)
    $stdout.flush
  end

  def self.run(options)
    d = Deployment.new(options)
    FileUtils.mkdir_p(d.root_dir)
    COMMANDS.each do |command|
      script_log = nil
      begin
        case command
        when 'DownloadBundle'
          download_bundle(d, options[:bundle])
        when 'Install'
          FileUtils.rm_f(d.cleanup_file) if options[:forget_cleanup]
          install(d)
        else
          hook = d.hook_executor(command)
          script_log = hook.execute unless hook.is_noop?
        end
        report(command, 'Succeeded', diagnostics(CodeDeploy::ScriptError::SUCCEEDED_CODE, '', 'Succeeded: '), script_log)
      rescue CodeDeploy::ScriptError => e
        report(command, 'Failed', JSON.parse(e.to_json))
        return 1
      rescue Exception => e # rubocop:disable Lint/RescueException -- as the agent's command poller
        report(command, 'Failed', diagnostics(CodeDeploy::ScriptError::UNKNOWN_ERROR_CODE, '', e.message || ''))
        return 1
      end
    end
    0
  end
end

exit NonstopDriver.run(options)
