// The collector: a Python 3.11 Functions app on a Flex Consumption plan, running as the
// user-assigned identity, with every app setting the code reads and nothing else.
// (tests/contract/test_bicep.py holds this file to the settings function_app/ reads.)

@description('Function app name.')
param name string

@description('Flex Consumption plan name.')
param planName string

@description('Azure region.')
param location string

@description('Tags applied to the plan and the app.')
param tags object = {}

@description('Service of azure.yaml whose code `azd deploy` puts here: azd finds the app by its azd-service-name tag.')
param azdServiceName string = 'api'

@description('Resource id of the user-assigned managed identity.')
param identityId string

@description('Client id of the user-assigned managed identity.')
param identityClientId string

@description('Blob endpoint of the storage account (https://<account>.blob.<suffix>/).')
param blobEndpoint string

@description('Queue endpoint of the storage account.')
param queueEndpoint string

@description('Table endpoint of the storage account.')
param tableEndpoint string

@description('Container Flex Consumption deploys the package to.')
param deploymentContainerName string

@description('The content queue (its poison queue is <name>-poison).')
param contentQueueName string

@description('Prefix of the state tables.')
param stateTablePrefix string

@description('Container for dead letters.')
param deadletterContainerName string

@description('Application Insights connection string.')
param appInsightsConnectionString string

@description('Resource id of the Log Analytics workspace that receives the app\'s platform logs and metrics.')
param workspaceId string

@description('ADX data-management (ingest) URI.')
param adxIngestUri string

@description('ADX engine (query) URI.')
param adxEngineUri string

@description('ADX database.')
param adxDatabase string

@description('Use managed streaming ingestion (the cluster must allow streaming ingestion).')
param adxStreaming bool

@description('Tenants to collect, as [{tenantId, contentTypes, cloud}] (AUDITLAKE_TENANTS).')
param tenants array

@description('Default Microsoft 365 cloud (AUDITLAKE_CLOUD).')
param cloud string

@description('PublisherIdentifier sent on every call (AUDITLAKE_PUBLISHER_ID).')
param publisherId string

@description('Timer schedule, six-field NCRONTAB (COLLECT_SCHEDULE).')
param collectSchedule string

@description('Purview audit search timer, six-field NCRONTAB in UTC (SEARCH_SCHEDULE).')
param searchSchedule string

@description('Entra ID log polling timer, six-field NCRONTAB in UTC (ENTRA_SCHEDULE).')
param entraSchedule string

@description('Entra ID logs polled from Microsoft Graph (AUDITLAKE_ENTRA_STREAMS): entra, or a comma list of signins, noninteractive, serviceprincipal, managedidentity, directoryaudits; empty for none.')
param entraStreams string

@description('Days of history the Purview audit search backfill keeps whole (AUDITLAKE_SEARCH_HISTORY_DAYS).')
@minValue(2)
param searchHistoryDays int

@description('How the app authenticates to the Management Activity API.')
@allowed(['federated', 'secret'])
param authMode string

@description('Application (client) id of the multi-tenant app registration.')
param apiClientId string

@description('Audience of the managed identity token presented as a federated credential.')
param tokenExchangeAudience string

@description('Key Vault URI (https://<vault>.vault.<suffix>/); only for authMode secret.')
param keyVaultUri string

@description('Name of the Key Vault secret holding the client secret; only for authMode secret.')
param clientSecretName string

@description('Most instances the plan scales to (Flex Consumption: 40 to 1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int

@description('Memory of one instance.')
@allowed([512, 2048, 4096])
param instanceMemoryMB int

// Read by the Functions host and the Python worker rather than by function_app/.
var platformSettings = {
  // The worker imports this root file; a package named function_app/ would shadow function_app.py.
  PYTHON_SCRIPT_FILE_NAME: 'main.py'
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
}

// Read by function_app/config.py (and, for the storage connection, by the host as well).
var collectorSettings = {
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureWebJobsStorage__blobServiceUri: blobEndpoint
  AzureWebJobsStorage__queueServiceUri: queueEndpoint
  AzureWebJobsStorage__tableServiceUri: tableEndpoint
  // Resolved by the Functions host itself in the trigger bindings (%CONTENT_QUEUE%, %COLLECT_SCHEDULE%,
  // %SEARCH_SCHEDULE%), which has no default for them: always set. In a cloud without the Purview audit
  // search API the search timer still fires; it logs one line per tenant and does nothing else.
  CONTENT_QUEUE: contentQueueName
  COLLECT_SCHEDULE: collectSchedule
  SEARCH_SCHEDULE: searchSchedule
  // Always set, like the other schedules; the timer polls only what AUDITLAKE_ENTRA_STREAMS names.
  ENTRA_SCHEDULE: entraSchedule
  AUDITLAKE_ENTRA_STREAMS: entraStreams
  STATE_TABLE_PREFIX: stateTablePrefix
  DEADLETTER_CONTAINER: deadletterContainerName
  ADX_INGEST_URI: adxIngestUri
  ADX_ENGINE_URI: adxEngineUri
  ADX_DATABASE: adxDatabase
  ADX_STREAMING: string(adxStreaming)
  ADX_CLIENT_ID: identityClientId
  AUDITLAKE_TENANTS: string(tenants)
  AUDITLAKE_CLOUD: cloud
  AUDITLAKE_PUBLISHER_ID: publisherId
  // A parameter rather than the code's default: a longer Purview retention (Audit Premium) backfills more.
  AUDITLAKE_SEARCH_HISTORY_DAYS: string(searchHistoryDays)
  // The code's defaults, spelled out so they can be changed in one place.
  AUDITLAKE_OVERLAP_MINUTES: '60'
  AUDITLAKE_SAFETY_LAG_SECONDS: '30'
  AUDITLAKE_SWEEP_HOURS: '24'
  // Memory the blobs in flight may hold together: the instance less ~512 MB for the worker, the
  // SDKs and the runtime (at least half of it). The blob size cap (AUDITLAKE_MAX_BLOB_BYTES)
  // follows from it in the code, so it is not set here.
  AUDITLAKE_MEMORY_BUDGET_MB: string(max(instanceMemoryMB - 512, instanceMemoryMB / 2))
  AUDITLAKE_RETRY_ATTEMPTS: '8'
  AUDITLAKE_RETRY_BASE_SECONDS: '0.5'
  AUDITLAKE_RETRY_MAX_SECONDS: '60'
  AUDITLAKE_HTTP_TIMEOUT_SECONDS: '120'
  AUDITLAKE_CONCURRENCY: '32'
  // Longer than host.json functionTimeout (10 min), so a live claim is never taken over.
  AUDITLAKE_CLAIM_LEASE_MINUTES: '11'
  AUDITLAKE_REQUEUE_AFTER_MINUTES: '60'
}

// How function_app/o365/auth.py token_provider_from_env finds its credential, per mode.
var authSettings = {
  // The app registration trusts the managed identity: no secret anywhere.
  federated: {
    AUDITLAKE_FEDERATED_MI: '1'
    AZURE_CLIENT_ID: apiClientId
    MANAGED_IDENTITY_CLIENT_ID: identityClientId
    AUDITLAKE_TOKEN_EXCHANGE_AUDIENCE: tokenExchangeAudience
  }
  // A client secret kept in Key Vault, resolved by the platform with the user-assigned identity.
  secret: {
    AZURE_CLIENT_ID: apiClientId
    AZURE_CLIENT_SECRET: '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${clientSecretName}/)'
  }
}

var appSettings = union(platformSettings, collectorSettings, authSettings[authMode])

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: Flex Consumption zone redundancy is offered in some regions only; the collector catches up from its checkpoint after an outage
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: the app has no HTTP triggers; its public endpoint stays on so the package can be deployed without a virtual network
  // checkov:skip=CKV_AZURE_17: no HTTP triggers, so no incoming client to present a certificate
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales to zero by design; timer and queue triggers wake it
  // checkov:skip=CKV_AZURE_213: no HTTP endpoint to probe; the host's health is visible in Application Insights
  name: name
  location: location
  // On the app only: azd refuses a tag it finds on two resources.
  tags: union(tags, { 'azd-service-name': azdServiceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [for setting in items(appSettings): {
        name: setting.key
        value: setting.value
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${blobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// The host's and the functions' logs as the platform sees them (FunctionAppLogs), beside the
// Application Insights telemetry, and the app's metrics.
resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: site
  properties: {
    workspaceId: workspaceId
    logs: [
      {
        category: 'FunctionAppLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
